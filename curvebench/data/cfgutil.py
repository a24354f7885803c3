"""Helpers to read config nodes that may be omegaconf DictConfigs or plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from curvebench.errors import DataError


def as_dict(node: Any) -> dict[str, Any]:
    """A plain, resolved dict from a DictConfig, a mapping or None."""
    if node is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(node, Mapping):
        return {str(k): v for k, v in node.items()}
    raise DataError(f"expected a config mapping, got {type(node).__name__}: {node!r}")


def require(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise DataError(f"{where} has no {key!r}; add it to the config")
    return cfg[key]
