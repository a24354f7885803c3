"""Helpers shared by the sample-selection methods (Co-teaching, O2U-Net): the forget rate, small-loss
selection, and the precision/recall of a selection against the clean labels (diagnostics only)."""

from __future__ import annotations

from typing import Any

import torch

from curvebench.engine.method_config import require
from curvebench.errors import ConfigError


def method_forget_rate(method_cfg: Any, noise_rate: float) -> float:
    """tau: ``method_cfg.forget_rate`` when set, else the split's nominal noise rate (privileged, as
    in the official Co-teaching and O2U-Net code). A method passes ``ctx.split.noise_rate``."""
    value = method_cfg.get("forget_rate")
    return float(noise_rate if value is None else value)


def forget_rate(cfg: Any) -> float:
    """tau from a full run config (``method`` and ``split`` nodes), before the split spec exists."""
    return method_forget_rate(cfg.method, cfg.split.noise_rate)


def check_explicit_forget_rate(value: float | None, name: str) -> None:
    """A set ``method.forget_rate`` lies in [0, 1) (for the config classes' ``__post_init__``)."""
    require(value is None or 0.0 <= value < 1.0,
            f"{name}: method.forget_rate must be in [0, 1) (the fraction of samples dropped), got {value}; "
            "set method.forget_rate=<value in [0, 1)>")


def check_forget_rate(cfg: Any) -> float:
    """``forget_rate(cfg)``, or a ConfigError that says what to change when a null
    ``method.forget_rate`` takes a ``split.noise_rate`` outside [0, 1) (a rule across config nodes;
    the config classes check a set one with ``check_explicit_forget_rate``)."""
    tau = forget_rate(cfg)
    if cfg.method.get("forget_rate") is None and not 0.0 <= tau < 1.0:
        raise ConfigError(f"{cfg.method.name}: method.forget_rate is null, so the forget rate is "
                          f"split.noise_rate={tau}, which is outside [0, 1); set method.forget_rate=<value in [0, 1)>")
    return tau


def small_loss_positions(loss: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Positions (in ``loss``) of the ``num_keep`` smallest values; ties go to the lower position.
    A stable sort on the device: no host synchronisation, deterministic on CPU and GPU."""
    return torch.sort(loss.detach(), stable=True).indices[:num_keep]


def precision_recall(selected: torch.Tensor, candidates: torch.Tensor, is_clean: torch.Tensor) -> dict[str, float]:
    """Precision (fraction of the selected samples that are clean) and recall (fraction of the clean
    candidates that were selected), over the ``candidates`` (bool masks over the training set).
    A value whose denominator is 0 is left out (JSON has no NaN)."""
    sel = selected & candidates
    n_sel = int(sel.sum())
    n_clean = int((candidates & is_clean).sum())
    tp = int((sel & is_clean).sum())
    out: dict[str, float] = {}
    if n_sel:
        out["precision"] = tp / n_sel
    if n_clean:
        out["recall"] = tp / n_clean
    return out
