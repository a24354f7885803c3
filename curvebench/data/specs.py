"""``spec_from_config``: the SplitSpec of a run's root config."""

from __future__ import annotations

import dataclasses
from typing import Any

from curvebench.data.cfgutil import as_dict, require
from curvebench.data.split import validate_spec
from curvebench.data.types import SplitSpec
from curvebench.errors import DataError

_FIELDS = {f.name: f for f in dataclasses.fields(SplitSpec)}


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"split.{key} must be an integer, got {value!r}")
    try:
        f = float(value)
    except ValueError:
        raise DataError(f"split.{key} must be an integer, got {value!r}") from None
    if not f.is_integer():
        raise DataError(f"split.{key} must be an integer, got {value!r}")
    return int(f)


def _float(value: Any, key: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"split.{key} must be a number, got {value!r}") from None


def spec_from_config(cfg: Any) -> SplitSpec:
    """SplitSpec from ``cfg.dataset.name`` and the ``cfg.split`` node (same key names as SplitSpec).

    Missing split keys take SplitSpec's defaults, except ``meta_per_class``, which defaults to the
    dataset's protocol value (``cfg.dataset.meta_per_class``). Unknown keys are an error (typos).
    """
    root = as_dict(cfg)
    dataset = as_dict(root.get("dataset"))
    name = str(require(dataset, "name", "cfg.dataset"))
    node = as_dict(root.get("split"))
    unknown = sorted(k for k in node if k not in _FIELDS or k == "dataset")
    unknown = [k for k in unknown if not k.startswith("_")]
    if unknown:
        known = ", ".join(k for k in _FIELDS if k != "dataset")
        raise DataError(f"unknown key(s) in cfg.split: {', '.join(unknown)}; known: {known}")
    values: dict[str, Any] = {"dataset": name}
    for key, f in _FIELDS.items():
        if key == "dataset":
            continue
        value = node.get(key)
        if value is None and key == "meta_per_class":
            value = dataset.get("meta_per_class")
        if value is None:
            continue
        if f.type in ("int", int):
            values[key] = _int(value, key)
        elif f.type in ("float", float):
            values[key] = _float(value, key)
        else:
            values[key] = str(value)
    spec = SplitSpec(**values)
    validate_spec(spec)
    return spec
