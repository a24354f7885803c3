"""The explicit list of built-in method modules, then the methods of installed plugins.

Importing a module registers its methods in ``METHODS``; an import error fails loudly instead of
silently dropping a method from a suite, for a plugin too (curvebench/plugins.py: one line naming
its distribution and entry point). Suites say ``method: [builtin]`` for the methods below only
(the published suites: their plans never change when a plugin is installed) and ``method: [all]``
for these plus every plugin's (the smoke suites).
"""

from __future__ import annotations

import importlib

METHOD_MODULES = (
    "baselines.ce",
    "baselines.focal",
    "baselines.class_balanced",
    "baselines.ldam_drw",
    "baselines.coteaching",
    "baselines.o2u",
    "baselines.mwnet",
    "baselines.har",
    "baselines.dal",
    "baselines.dynamic_loss",
    "curvenet",
)

_loaded = False
_plugin_methods: dict[str, str] = {}  # method name -> the distribution that provides it


def load_all_methods() -> None:
    """Register the built-in methods, then every ``curvebench.methods`` entry point's."""
    global _loaded, _plugin_methods
    if not _loaded:
        from curvebench.engine.method import METHODS
        from curvebench.plugins import METHOD_GROUP, load_registering

        for module in METHOD_MODULES:
            importlib.import_module(module)
        _plugin_methods = load_registering(METHOD_GROUP, METHODS)
        _loaded = True


def plugin_methods() -> dict[str, str]:
    """Registered method name -> distribution, for the methods plugins provide."""
    load_all_methods()
    return dict(_plugin_methods)


def builtin_methods() -> list[str]:
    """The registered methods that no plugin provides (``method: [builtin]``), sorted."""
    from curvebench.engine.method import METHODS

    load_all_methods()
    return [name for name in METHODS.names() if name not in _plugin_methods]
