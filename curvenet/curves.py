"""Loss curves -> CurveNet inputs (paper Eq. 7-8), and the k = 0 pseudo-meta set (Table 7).

Eq. 7: mu_{k,t} = mean of l_{j,t} over the training samples j whose *observed* label is k.
Eq. 8: l'_{i,t} = l_{i,t} - mu_{y_i,t}.
The official code subtracts the mean only; the introduction of the paper also divides by the
standard deviation (``std=True``, off by default). The curve fed to CurveNet keeps epochs
S .. T-2: the first S epochs (``skip_first``) and the last one (``drop_last``) are dropped, as the
code's ``stastart_epoch = 5`` / ``staend_epoch = 299`` on a 300-epoch probe (D = 294).

A value may be missing (NaN) where a sample was not visited in an epoch, which only happens when
``train.limit_batches`` cuts epochs short (smoke runs): class means ignore missing values, and a
missing value becomes 0 after normalisation (the class mean).
"""

from __future__ import annotations

import torch

from curvebench.errors import ConfigError


def curve_dim(num_epochs: int, skip_first: int, drop_last: bool = True) -> int:
    """D, the length of the curve CurveNet sees, for a probe of ``num_epochs`` recorded epochs."""
    return num_epochs - skip_first - (1 if drop_last else 0)


def check_curve_window(num_epochs: int, skip_first: int, drop_last: bool = True) -> None:
    if skip_first < 0:
        raise ConfigError(f"method.skip_first (S) must be >= 0, got {skip_first}")
    if curve_dim(num_epochs, skip_first, drop_last) < 1:
        last = " and drops the last one (method.drop_last_epoch)" if drop_last else ""
        raise ConfigError(
            f"method.skip_first S={skip_first} leaves no loss value: the probe records {num_epochs} epochs{last}. "
            f"Choose S <= {num_epochs - 1 - (1 if drop_last else 0)} or lengthen the probe "
            "(method.probe.epochs, method.probe.cyclic_epochs)"
        )


def class_epoch_stats(losses: torch.Tensor, labels: torch.Tensor,
                      num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class, per-epoch mean and (population) standard deviation of ``losses`` [n, T] over the
    samples of each observed class, ignoring missing (NaN) values. Returns two [K, T] tensors."""
    seen = ~torch.isnan(losses)
    values = torch.where(seen, losses, torch.zeros_like(losses))
    zeros = torch.zeros(num_classes, losses.shape[1], dtype=losses.dtype, device=losses.device)
    count = zeros.clone().index_add_(0, labels, seen.to(losses.dtype))
    total = zeros.clone().index_add_(0, labels, values)
    mean = total / count.clamp_min(1)
    dev = torch.where(seen, losses - mean[labels], torch.zeros_like(losses))
    var = torch.zeros_like(total).index_add_(0, labels, dev * dev) / count.clamp_min(1)
    return mean, var.sqrt()


def normalise_curves(losses: torch.Tensor, labels: torch.Tensor, num_classes: int, skip_first: int,
                     drop_last: bool = True, std: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 7-8 on raw probe losses [n, T] and observed labels [n]: the [n, D] CurveNet inputs."""
    t = losses.shape[1]
    check_curve_window(t, skip_first, drop_last)
    mean, sd = class_epoch_stats(losses, labels, num_classes)
    out = losses - mean[labels]
    if std:
        out = out / (sd[labels] + eps)
    out = torch.nan_to_num(out, nan=0.0)
    end = t - 1 if drop_last else t
    return out[:, skip_first:end].contiguous()


def lowest_loss_per_class(losses: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int,
                          score: str = "mean") -> torch.Tensor:
    """Positions of the ``per_class`` samples of each observed class with the lowest probe loss
    (Table 7, "0" clean images: a pseudo-meta set drawn from the noisy training set).

    ``score``: ``mean`` = the mean loss over all recorded probe epochs [DECISION: the paper only says
    "samples with lower loss in the probing stage"; the mean over the run is O2U-Net's criterion,
    which the paper cites], or ``last`` = the loss of the last probe epoch. A class with fewer
    samples gives all of them. Ties go to the lower position. Sorted positions are returned.
    """
    if score == "mean":
        s = torch.nanmean(losses, dim=1)
    elif score == "last":
        s = losses[:, -1]
    else:
        raise ConfigError(f"method.pseudo_meta_score must be 'mean' or 'last', got {score!r}")
    s = torch.nan_to_num(s, nan=float("inf"))
    keep = []
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        if rows.numel() == 0:
            continue
        order = torch.sort(s[rows], stable=True).indices  # stable: ties keep position order
        keep.append(rows[order[:per_class]])
    if not keep:
        raise ConfigError("the pseudo-meta set is empty: the training split has no samples")
    return torch.cat(keep).sort().values
