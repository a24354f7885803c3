"""Label-smoothing cross-entropy (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import MISSING, MethodConfig, Number
from curvebench.errors import ConfigError


def label_smoothing_loss(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """Batch mean of (1 - eps) * CE_i + eps * mean_k(-log p_ik): CE against the target
    (1 - eps) * one-hot + eps / K."""
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    return ((1.0 - eps) * nll - eps * logp.mean(dim=1)).mean()


@dataclass
class LabelSmoothingConfig(MethodConfig):
    """The YAML's keys and their types; checked when the config is composed (defaults: the YAML)."""

    smoothing: Number = MISSING  # eps in [0, 1)

    def __post_init__(self) -> None:
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"method.smoothing must be a number in [0, 1), got {self.smoothing!r}")


@register_method("label_smoothing")
class LabelSmoothing(Method):
    """``label_smoothing_loss`` with ``smoothing`` = eps (0.1 by default), the recipe's optimiser and
    schedule, one network: the base class does everything else."""

    config_class = LabelSmoothingConfig

    def train_step(self, batch, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        loss = label_smoothing_loss(self.model(batch.x), batch.y, float(self.cfg.smoothing))
        self.step(self.optimizer, loss)
        return {"loss": loss.detach()}
