"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), in the softmax form
of the LDAM-DRW code (Cao et al. 2019, ``losses.FocalLoss``), the most likely implementation behind
the "Focal" rows of the CurveNet paper (docs/methods.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import MISSING, MethodConfig, Number, check_nonneg


def softmax_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Batch mean of FL_i = (1 - p_i)^gamma * CE_i with p_i = exp(-CE_i).

    ``weight`` (per class) multiplies CE_i before p_i is taken, as the LDAM-DRW code does; p_i is
    then not the model's probability (a quirk of that code, docs/methods.md §4). The mean is over the
    batch (not over the weights)."""
    ce = F.cross_entropy(logits, target, weight=weight, reduction="none")
    p = torch.exp(-ce)
    return ((1.0 - p) ** gamma * ce).mean()


@dataclass
class FocalConfig(MethodConfig):
    gamma: Number = MISSING  # focusing parameter, >= 0 (0 = CE)

    def __post_init__(self) -> None:
        check_nonneg(self.gamma, "method.gamma")


@register_method("focal")
class Focal(Method):
    """``softmax_focal_loss`` with ``gamma`` = 1, the LDAM-DRW script's value (docs/methods.md §4).

    [DECISION] the softmax form of the LDAM-DRW code with gamma = 1, not RetinaNet's sigmoid focal
    loss with alpha-balancing (gamma 2, alpha 0.25) nor the CB code's sigmoid focal loss (available as
    ``method=cb method.loss_type=focal``).
    Deviations: the harmonised recipe (Nesterov, wd 5e-4, decays x0.1 at 80/100) instead of the LDAM
    script's recipe (no Nesterov, wd 2e-4, x0.01 at 160 and x0.0001 at 180), and the reported model
    is evaluated at every epoch (last and best both recorded).
    """

    config_class = FocalConfig

    def train_step(self, batch, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        loss = softmax_focal_loss(self.model(batch.x), batch.y, float(self.cfg.gamma))
        self.step(self.optimizer, loss)
        return {"loss": loss.detach()}

