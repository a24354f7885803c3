"""Methods, datasets and configs from other installed distributions, found through entry points.

A plugin is an ordinary Python distribution that declares entry points in three groups
(docs/ARCHITECTURE.md, "Adding a method or dataset from outside"; worked example: tests/plugin_example):

- ``curvebench.methods``: name = a method's registry name, value = the module whose import
  registers it (``@register_method``);
- ``curvebench.datasets``: name = a dataset's registry name, value = the module whose import
  registers its reader (``@register_dataset``);
- ``curvebench.conf``: name = a label, value = a package whose directory holds config groups
  (``method/<name>.yaml``, ``dataset/<name>.yaml``, ...), searched by Hydra after curvebench/conf.

Loading is as loud as the built-in list in methods.py: a plugin that fails to import, registers no
entry under its entry point's name, or ships a config file curvebench (or another plugin) already
has stops every command with one line naming its distribution and entry point.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from curvebench.errors import ConfigError

METHOD_GROUP = "curvebench.methods"
DATASET_GROUP = "curvebench.datasets"
CONF_GROUP = "curvebench.conf"


def distribution(ep: EntryPoint) -> str:
    """The name of the distribution that declares ``ep`` (as ``pip uninstall`` takes it)."""
    dist = getattr(ep, "dist", None)
    return str(dist.metadata["Name"]) if dist is not None else "unknown distribution"


def describe(ep: EntryPoint) -> str:
    return f"plugin {distribution(ep)!r}, entry point {ep.name} = {ep.value} (group {ep.group})"


def plugin_error(ep: EntryPoint, problem: str) -> ConfigError:
    first = problem.strip().splitlines()[0] if problem.strip() else problem
    return ConfigError(f"{describe(ep)}: {first}; fix the plugin or `pip uninstall {distribution(ep)}`")


@functools.cache
def plugin_entry_points(group: str) -> tuple[EntryPoint, ...]:
    """The entry points of ``group`` in a fixed order (distribution, then name). Cached per process:
    call ``plugin_entry_points.cache_clear()`` after installing a plugin in a running process."""
    found = {(distribution(ep), ep.name, ep.value): ep for ep in entry_points(group=group)}
    return tuple(found[key] for key in sorted(found))


def load_registering(group: str, registry: Any) -> dict[str, str]:
    """Import every module of ``group``; each must register its entry point's name in ``registry``.

    Returns registry name -> distribution. Any failure is a one-line ConfigError."""
    names: dict[str, str] = {}
    for ep in plugin_entry_points(group):
        try:
            ep.load()
        except Exception as err:  # noqa: BLE001 - whatever a plugin raises becomes one line naming it
            raise plugin_error(ep, f"import failed: {type(err).__name__}: {err}") from None
        if ep.name not in registry:
            raise plugin_error(ep, f"importing {ep.module} registered no {registry.kind} named {ep.name!r} "
                                   f"(registered {registry.kind}s: {', '.join(registry.names())}); "
                                   "the entry point's name must be the registry name")
        names[ep.name] = distribution(ep)
    return names


@functools.cache
def plugin_conf_dirs() -> tuple[tuple[str, Path], ...]:
    """(distribution, config directory) of every ``curvebench.conf`` entry point, in search order."""
    dirs = []
    for ep in plugin_entry_points(CONF_GROUP):
        try:
            package = ep.load()
        except Exception as err:  # noqa: BLE001
            raise plugin_error(ep, f"import failed: {type(err).__name__}: {err}") from None
        files = getattr(package, "__file__", None)
        where = Path(files).parent if files else next(iter(getattr(package, "__path__", [])), None)
        if where is None or not Path(where).is_dir():
            raise plugin_error(ep, f"{ep.module} is not a package directory of config groups")
        dirs.append((ep, Path(where).resolve()))
    _check_no_shadowing(dirs)
    return tuple((distribution(ep), d) for ep, d in dirs)


def _check_no_shadowing(dirs: list[tuple[EntryPoint, Path]]) -> None:
    """A plugin's config file may not share a name with curvebench's or an earlier plugin's: Hydra
    would silently read the first, so a plugin can never change a built-in config (or a suite)."""
    from curvebench.config import CONF_DIR

    owners = {p.relative_to(CONF_DIR).as_posix(): "curvebench" for p in CONF_DIR.rglob("*.yaml")}
    for ep, conf in dirs:
        for path in sorted(conf.rglob("*.yaml")):
            rel = path.relative_to(conf).as_posix()
            if rel in owners:
                raise plugin_error(ep, f"its config {rel} is already provided by {owners[rel]}; "
                                       "give it another name")
            owners[rel] = distribution(ep)


def installed_plugins() -> dict[str, dict[str, list[str]]]:
    """distribution -> {"methods" | "datasets" | "configs": entry point names}, for `curvebench list`."""
    out: dict[str, dict[str, list[str]]] = {}
    for kind, group in (("methods", METHOD_GROUP), ("datasets", DATASET_GROUP), ("configs", CONF_GROUP)):
        for ep in plugin_entry_points(group):
            out.setdefault(distribution(ep), {}).setdefault(kind, []).append(ep.name)
    return out
