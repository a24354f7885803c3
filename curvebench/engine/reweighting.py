"""Pieces shared by several methods: class-balanced (effective-number) weights and deferred
re-weighting (DRW).

``class_balanced_weights`` is the one implementation of Cui et al. (2019)'s weights used by
Class-Balanced loss (``cb``), LDAM-DRW's DRW stage (``ldam_drw``), HAR's optional DRW (``har``) and
CurveNet's DRW option (docs/methods.md §5, §6, §11, §2.7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from curvebench.engine.method_config import check_beta
from curvebench.errors import ConfigError

if TYPE_CHECKING:
    from curvebench.engine.context import CleanLabels

DEFAULT_BETA = 0.9999  # the CB paper's CIFAR-LT default; LDAM-DRW and HAR use it for DRW


def class_balanced_weights(counts: Any, beta: float) -> np.ndarray:
    """Effective-number class weights (Cui et al. 2019), normalised to sum to K.

    E_n = (1 - beta^n) / (1 - beta);  w_c = 1 / E_{n_c} = (1 - beta) / (1 - beta^{n_c});
    then w <- w * K / sum(w). ``beta = 0`` gives all ones (no re-weighting).

    [DECISION] A class with no (observed) sample has no effective number (1/0); it gets weight 0
    and the others are normalised so that all K weights still sum to K. Such a class never appears
    as a training label, so its weight is never used (the official codes would produce NaN).
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array of per-class counts, got shape {n.shape}")
    if (n < 0).any():
        raise ValueError(f"class counts must be >= 0, got {n.tolist()}")
    check_beta(beta, "beta")
    present = n > 0
    if not present.any():
        raise ValueError("every class count is 0: class-balanced weights need at least one sample")
    w = np.zeros_like(n)
    w[present] = (1.0 - beta) / (1.0 - np.power(beta, n[present]))
    return w * (n.size / w.sum())


def drw_class_weights(counts: Any, epoch: int, start_epoch: int, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Deferred re-weighting (Cao et al. 2019): all-ones weights before ``start_epoch`` (0-based),
    class-balanced weights (``beta``) from ``start_epoch`` on. LDAM-DRW switches at its first LR
    decay (``epoch // 160``); the benchmark uses the recipe's first milestone (``drw_start_epoch``)."""
    k = len(np.asarray(counts))
    if epoch < start_epoch:
        return np.ones(k, dtype=np.float64)
    return class_balanced_weights(counts, beta)


def drw_start_epoch(recipe: Mapping[str, Any], override: Any = None) -> int:
    """The DRW switch epoch: ``override`` when given, else the recipe's first LR milestone."""
    if override is not None:
        return int(override)
    milestones = list(recipe.get("milestones") or [])
    if not milestones:
        raise ConfigError("DRW starts at the recipe's first LR milestone, but recipe.milestones is empty; "
                          "set the method's drw_epoch or give the recipe milestones")
    return int(milestones[0])


def as_device_tensor(values: Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)


def mean_weight_by_noise(sample_weights: torch.Tensor, clean: CleanLabels,
                         seen: torch.Tensor | None = None) -> dict[str, float]:
    """Diagnostics: ``mean_weight_clean`` / ``mean_weight_noisy``, the mean weight of the training
    samples whose observed label is / is not their clean one.

    A sample whose clean label is unknown (-1) is neither clean nor noisy: it counts in neither
    mean; nor does one outside ``seen`` (a sample not weighted yet). A group with no member is left
    out (no None values).
    """
    known = clean.labels >= 0
    if seen is not None:
        known = known & seen
    out: dict[str, float] = {}
    for name, mask in (("mean_weight_clean", known & ~clean.noisy), ("mean_weight_noisy", known & clean.noisy)):
        if bool(mask.any()):
            out[name] = float(sample_weights[mask].float().mean())
    return out
