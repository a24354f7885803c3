"""LDAM-DRW (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
NeurIPS 2019), docs/methods.md §6: a cosine classifier, label-distribution-aware margins subtracted from
the true-class logit, and deferred re-weighting with class-balanced weights after the first LR decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import (
    MISSING,
    MethodConfig,
    Number,
    check_beta,
    check_int_at_least,
    check_positive,
)
from curvebench.engine.ops import one_hot
from curvebench.engine.reweighting import (
    DEFAULT_BETA,
    as_device_tensor,
    drw_class_weights,
    drw_start_epoch,
    mean_weight_by_noise,
)
from curvebench.errors import ConfigError


class NormedLinear(nn.Module):
    """Cosine classifier: logits_k = <x/|x|, w_k/|w_k|>, no bias (LDAM-DRW's ``NormedLinear``).
    The class vectors start uniform in [-1, 1] and are rescaled to unit norm, as there."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def ldam_margins(counts: Any, max_m: float = 0.5) -> np.ndarray:
    """m_c = C / n_c^(1/4) with C such that max_c m_c = max_m.

    [DECISION] a class with no observed sample (n_c = 0, never a training target) gets max_m
    instead of an infinite margin; the other margins are scaled over the classes present."""
    n = np.asarray(counts, dtype=np.float64)
    if (n < 0).any() or not (n > 0).any():
        raise ValueError(f"class counts must be >= 0 with at least one > 0, got {n.tolist()}")
    m = np.full(n.shape, float(max_m))
    present = n > 0
    raw = 1.0 / np.power(n[present], 0.25)
    m[present] = raw * (max_m / raw.max())
    return m


def ldam_loss(logits: torch.Tensor, target: torch.Tensor, margins: torch.Tensor, s: float,
              class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """CE(s * (z - m_y e_y), y), optionally class-weighted (torch's weighted mean, as the LDAM code).
    ``logits`` are the cosine logits z; the margin comes off the true-class logit only."""
    onehot = one_hot(target, logits.shape[1], logits.dtype)
    shifted = logits - onehot * margins[target][:, None]
    return F.cross_entropy(s * shifted, target, weight=class_weights)


def replace_classifier(model: nn.Module, head: nn.Module) -> None:
    """Swap the model's final layer (named by ``model.classifier``) for ``head``."""
    name = getattr(model, "classifier", None)
    if name is None or not isinstance(getattr(model, name, None), nn.Module):
        raise ConfigError(f"{type(model).__name__} does not name its final layer in `classifier`; "
                          "LDAM needs it to install the cosine classifier")
    setattr(model, name, head)


@dataclass
class LDAMDRWConfig(MethodConfig):
    max_m: Number = MISSING  # largest margin, > 0
    s: Number = MISSING  # logit scale, > 0
    drw: bool = MISSING
    drw_epoch: Optional[int] = MISSING  # null: the recipe's first LR milestone
    beta: Number = MISSING  # in [0, 1)

    def __post_init__(self) -> None:
        check_positive(self.max_m, "method.max_m")
        check_positive(self.s, "method.s")
        check_beta(self.beta, "method.beta")
        check_int_at_least(self.drw_epoch, "method.drw_epoch", 0, null="the recipe's first milestone")


@register_method("ldam_drw")
class LDAMDRW(Method):
    """LDAM-DRW (Cao et al., NeurIPS 2019; kaidic/LDAM-DRW; docs/methods.md §6).

    - Model: the configured backbone with its final layer (``model.classifier``) replaced by a cosine
      ``NormedLinear`` (L2-normalised features and class vectors, no bias). It is part of the model,
      so evaluation and the saved weights use it too.
    - Loss: margins m_c proportional to n_c^(-1/4), scaled so that the largest is ``max_m`` = 0.5,
      subtracted from the true-class cosine logit; logits scaled by ``s`` = 30; softmax CE.
    - DRW: class weights 1 before ``drw_epoch``, then effective-number weights (beta 0.9999, summing
      to K) from ``drw_epoch`` on; the CE is the weighted mean (torch ``weight=``), as in the code.
      ``drw_epoch`` null = the recipe's first LR milestone (LDAM: epoch 160 = its first decay;
      harmonised recipe: 80; digits: 18). ``drw: false`` gives plain LDAM.

    [DECISION] n_c are the observed (noisy) class counts (docs/methods.md §16.5).
    Deviations: the harmonised recipe (Nesterov, wd 5e-4, decays x0.1 at 80/100) instead of LDAM's
    (no Nesterov, wd 2e-4, x0.01 at 160, x0.0001 at 180), hence DRW from epoch 80 instead of 160;
    the backbone keeps the configured init (CurveNet's for resnet32) instead of LDAM's Kaiming init.
    """

    config_class = LDAMDRWConfig

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.method.drw:  # DRW needs a switch epoch: drw_epoch or the recipe's first milestone
            drw_start_epoch(cfg.recipe, cfg.method.drw_epoch)

    def setup(self) -> None:
        self.model = self.ctx.build_model()
        replace_classifier(self.model, NormedLinear(self.model.feature_dim, self.ctx.num_classes).to(self.ctx.device))
        self.optimizer = self.ctx.build_optimizer(self.model.parameters())
        counts = self.ctx.class_counts
        self.margins = as_device_tensor(ldam_margins(counts, float(self.cfg.max_m)), self.ctx.device)
        self.scale = float(self.cfg.s)
        self.drw_epoch = drw_start_epoch(self.ctx.recipe, self.cfg.drw_epoch) if self.cfg.drw else None
        self.class_weights = torch.ones(self.ctx.num_classes, device=self.ctx.device)

    def weights_at(self, epoch: int) -> np.ndarray:
        """The DRW class weights of ``epoch`` (all ones without DRW or before the switch)."""
        counts = self.ctx.class_counts
        if self.drw_epoch is None:
            return np.ones(len(counts))
        return drw_class_weights(counts, epoch, self.drw_epoch, float(self.cfg.get("beta", DEFAULT_BETA)))

    def on_epoch_start(self, phase: Phase, epoch: int) -> None:
        super().on_epoch_start(phase, epoch)
        self.class_weights = as_device_tensor(self.weights_at(epoch), self.ctx.device)

    def train_step(self, batch, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        loss = ldam_loss(self.model(batch.x), batch.y, self.margins, self.scale, self.class_weights)
        self.step(self.optimizer, loss)
        return {"loss": loss.detach()}

    def diagnostics(self, phase: Phase, epoch: int, clean) -> dict[str, Any]:
        if self.drw_epoch is None or epoch != phase.epochs - 1:
            return {}
        return mean_weight_by_noise(self.class_weights[self.ctx.train.labels], clean)

    def artifacts(self) -> dict[str, np.ndarray]:
        return {"margins": self.margins.cpu().numpy(), "class_weights_last": self.class_weights.cpu().numpy()}
