"""Suites: ``experiment`` presets that carry their grid, expanded into planned runs.

A suite's ``grid`` is a list of blocks; the runs of a block are the product of its value lists, and
the suite's runs are the union over its blocks. ``method: [builtin]`` means every built-in method
(the list in methods.py: published suites, whose plans an installed plugin must not change);
``method: [all]`` those and every installed plugin's (curvebench/plugins.py; the smoke suites).
Command-line overrides of a grid key narrow the grid (``method=ce seed=1``); other overrides apply
to every run. ``suite.method_overrides`` holds per-method settings (shorter probes in smoke runs).
"""

from __future__ import annotations

import copy
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from curvebench.config import compose_config, config_file, group_options, to_dict, validate_config
from curvebench.engine.method import METHODS
from curvebench.engine.records import config_hash
from curvebench.errors import ConfigError
from curvebench.methods import load_all_methods

GROUP_KEYS = ("dataset", "model", "method", "recipe")


def available_suites() -> list[str]:
    return group_options("experiment")


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def split_override(override: str) -> tuple[str, list[Any]]:
    """``key=v1,v2`` -> (key, [v1, v2]) with YAML-typed values."""
    if "=" not in override or override.startswith(("+", "~")):
        raise ConfigError(f"override {override!r} is not of the form key=value (additions with + are not allowed)")
    key, text = override.split("=", 1)
    key = key.strip()
    if key in GROUP_KEYS and not text.strip():
        from curvebench.config import group_options

        raise ConfigError(f"{key}= needs a value; available: {', '.join(group_options(key))}")
    return key, [_parse_value(v) for v in text.split(",")]


def grid_value(config: Mapping[str, Any], key: str) -> Any:
    """The value of a grid key in a resolved config (``method`` -> ``config['method']['name']``)."""
    if key in GROUP_KEYS:
        return config[key]["name"]
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


@dataclass
class PlannedRun:
    overrides: list[str]
    cfg: DictConfig
    config: dict[str, Any]  # resolved
    config_hash: str
    run_dir: Path
    grid: dict[str, Any]  # this run's grid values

    @property
    def label(self) -> str:
        return " ".join(f"{k}={_fmt(v)}" for k, v in self.grid.items())


def load_suite(name: str) -> DictConfig:
    """The ``suite`` node of a suite preset (grid, tables, requirements)."""
    if name not in available_suites():
        raise ConfigError(f"unknown suite {name!r}; available: {', '.join(available_suites())}")
    return compose_config([f"experiment={name}"]).suite


METHOD_SETS = ("all", "builtin")  # the words a grid's method list may be instead of names


def all_methods(which: str = "all") -> list[str]:
    """``method: [all]`` (``which="all"``: built-in and plugin methods) or ``method: [builtin]``: the
    registered methods that have their config file; the others are named on stderr."""
    from curvebench.methods import builtin_methods, plugin_methods

    load_all_methods()
    names = METHODS.names() if which == "all" else builtin_methods()
    plugins = plugin_methods()
    configs = set(group_options("method", builtin_only=which == "builtin"))
    for name in names:
        if name not in configs:
            where = (f"method/{name}.yaml in the curvebench.conf package of plugin {plugins[name]!r}"
                     if name in plugins else f"curvebench/conf/method/{name}.yaml")
            print(f"note: method {name!r} is registered but has no {where}; left out of `method: [{which}]` until "
                  "the file is added", file=sys.stderr)
    for name in sorted(configs - set(METHODS.names())):
        print(f"note: {config_file('method', name)} has no registered method; left out of `method: [{which}]` "
              "until its module is in METHOD_MODULES (curvebench/methods.py) or a plugin's curvebench.methods "
              "entry points", file=sys.stderr)
    return [n for n in names if n in configs]


def expand_grid(suite: DictConfig, user_overrides: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Grid points of ``suite`` narrowed by ``user_overrides``; returns (points, other overrides)."""
    load_all_methods()
    blocks = [dict(OmegaConf.to_container(b, resolve=True)) for b in suite.grid]  # type: ignore[arg-type]
    for block in blocks:
        for which in METHOD_SETS:
            if block.get("method") in ([which], which):
                block["method"] = all_methods(which)
        for key, values in block.items():
            if not isinstance(values, list):
                block[key] = [values]
    grid_keys = {k for b in blocks for k in b}
    extra: list[str] = []
    for override in user_overrides:
        key, wanted = split_override(override)
        if key not in grid_keys:
            extra.append(override)
            continue
        narrowed = []
        for block in blocks:
            if key not in block:
                narrowed.append(block)
                continue
            keep = [v for v in block[key] if any(v == w for w in wanted)]
            if keep:
                narrowed.append({**block, key: keep})
        if not any(key in b for b in narrowed):  # nothing in the grid matches: run the given values
            print(f"note: {override} is not in suite {suite.name!r}'s grid; running it in place of the grid values",
                  file=sys.stderr)
            narrowed = [{**b, key: wanted} if key in b else b for b in blocks]
        blocks = narrowed
    points, seen = [], set()
    for block in blocks:
        keys = list(block)
        for combo in itertools.product(*(block[k] for k in keys)):
            point = dict(zip(keys, combo))
            ident = tuple(sorted((k, _fmt(v)) for k, v in point.items()))
            if ident not in seen:
                seen.add(ident)
                points.append(point)
    return points, extra


def run_dir_for(config: Mapping[str, Any], cfg_hash: str) -> Path:
    """results/<dataset>/<split tag>/<method>/<config hash>/seed-<seed>: a function of the config."""
    from curvebench.data import spec_from_config

    spec = spec_from_config(config)
    return (Path(config["paths"]["results"]) / config["dataset"]["name"] / spec.tag() / config["method"]["name"]
            / cfg_hash[:12] / f"seed-{config['seed']}")


def plan_run(overrides: Sequence[str], grid: Mapping[str, Any] | None = None) -> PlannedRun:
    """Compose and plan one run from its Hydra overrides."""
    return _planned(compose_config(overrides), overrides, grid)


def _planned(cfg: DictConfig, overrides: Sequence[str], grid: Mapping[str, Any] | None) -> PlannedRun:
    config = to_dict(cfg)
    h = config_hash(config)
    return PlannedRun(list(overrides), cfg, config, h, run_dir_for(config, h), dict(grid or {}))


def plan_suite(name: str, user_overrides: Sequence[str] = ()) -> list[PlannedRun]:
    """Every run of suite ``name`` (narrowed by ``user_overrides``), composed and validated.

    Hydra composes once per distinct choice of config groups (method, model, ...) and per-method
    settings; the grid's plain values (rates, factors, seeds) are then set on a copy, which gives
    the same config as composing each run's full override list (tested) at a fraction of the cost.
    """
    suite = load_suite(name)
    points, extra = expand_grid(suite, user_overrides)
    if not points:
        raise ConfigError(f"no run of suite {name!r} matches {' '.join(user_overrides)}")
    method_overrides = OmegaConf.to_container(suite.method_overrides, resolve=True) or {}
    composed: dict[tuple[str, ...], DictConfig] = {}
    runs = []
    for point in points:
        groups = [f"{k}={_fmt(v)}" for k, v in point.items() if k in GROUP_KEYS]
        values = {k: v for k, v in point.items() if k not in GROUP_KEYS}
        base = [f"experiment={name}", *groups]
        method = point.get("method") or _compose_cached(composed, base + extra).method.name
        per_method = list(method_overrides.get(method, []))  # type: ignore[union-attr]
        cfg = copy.deepcopy(_compose_cached(composed, base + per_method + extra))
        for key, value in values.items():
            if OmegaConf.select(cfg, key, throw_on_missing=False, default=_ABSENT) is _ABSENT:
                raise ConfigError(f"suite {name!r}: grid key {key!r} is not a config key")
            OmegaConf.update(cfg, key, value, merge=False)
        validate_config(cfg)
        # the full override list reproduces this config through Hydra alone (used by launchers)
        overrides = base + [f"{k}={_fmt(v)}" for k, v in values.items()] + per_method + extra
        runs.append(_planned(cfg, overrides, point))
    return runs


_ABSENT = object()


def _compose_cached(cache: dict[tuple[str, ...], DictConfig], overrides: list[str]) -> DictConfig:
    key = tuple(overrides)
    if key not in cache:
        cache[key] = compose_config(overrides)
    return cache[key]
