"""The explicit list of method modules. Importing one registers its methods in ``METHODS``;
an import error fails loudly instead of silently dropping a method from a suite."""

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


def load_all_methods() -> None:
    global _loaded
    if not _loaded:
        for module in METHOD_MODULES:
            importlib.import_module(module)
        _loaded = True
