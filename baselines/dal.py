"""DAL: Dynamics-Aware Loss (Li et al. 2023, "Dynamics-Aware Loss for Learning with Label Noise";
code XiuchuanLi/DAL), docs/methods.md §13: generalised cross-entropy whose q rises over training from a
CE-like value to an easy-example-emphasising value, plus an entropy (soft bootstrapping) term that
switches on once q passes 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import MISSING, MethodConfig, Number, check_positive, require

EPS = 1e-6  # DAL's probability clamp and log offset


def dal_q(epoch: int, epochs: int, q_start: float, q_end: float) -> float:
    """q(i) = q_s + (q_e - q_s) * i / E for the 0-based epoch i (DAL's ``i``; its last value is
    q_s + (q_e - q_s)(E-1)/E)."""
    return q_start + (q_end - q_start) * epoch / epochs


def dal_t0(epochs: int, q_start: float, q_end: float) -> float:
    """The (fractional) epoch index at which q crosses 1: t0 = (1 - q_s) E / (q_e - q_s)."""
    return (1.0 - q_start) * epochs / (q_end - q_start)


def dal_lambda(epoch: int, epochs: int, q_start: float, q_end: float) -> float:
    """lambda(i) = max(0, (i - t0) / (E - t0)): 0 until q passes 1, then a linear ramp toward 1."""
    t0 = dal_t0(epochs, q_start, q_end)
    return max(0.0, (epoch - t0) / (epochs - t0))


def gce_loss(logits: torch.Tensor, target: torch.Tensor, q: float) -> torch.Tensor:
    """Generalised CE (Zhang & Sabuncu 2018): batch mean of (1 - p_y^q) / q, p clamped to [1e-6, 1]."""
    p = F.softmax(logits, dim=1).clamp(EPS, 1.0)
    p_y = p.gather(1, target[:, None]).squeeze(1)
    return ((1.0 - p_y.pow(q)) / q).mean()


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of H(p) = -sum_k p_k log(p_k + 1e-6) (DAL's soft bootstrapping term)."""
    p = F.softmax(logits, dim=1)
    return (-(p * torch.log(p + EPS)).sum(1)).mean()


def dal_loss(logits: torch.Tensor, target: torch.Tensor, q: float, lam: float) -> torch.Tensor:
    """GCE_q + lambda * H(p) / (q log K)."""
    k = logits.shape[1]
    return gce_loss(logits, target, q) + lam * prediction_entropy(logits) / (q * math.log(k))


@dataclass
class DALConfig(MethodConfig):
    q_start: Number = MISSING  # q at epoch 0: 0 < q_start < q_end
    q_end: Number = MISSING  # q at the end: > 1

    def __post_init__(self) -> None:
        check_positive(self.q_start, "method.q_start")
        check_positive(self.q_end, "method.q_end")
        require(self.q_start < self.q_end,
                f"method.q_start ({self.q_start}) must be below method.q_end ({self.q_end}): q rises")
        require(self.q_end > 1, "method.q_end must be > 1 so that q passes 1 and the entropy term switches on, "
                f"got {self.q_end}")


@register_method("dal")
class DAL(Method):
    """DAL (Li et al. 2023; XiuchuanLi/DAL, utils/losses.py and cifar.py; docs/methods.md §13).

    At 0-based epoch i of E (E = the recipe's epochs): loss = GCE_{q(i)} + lambda(i) H(p) / (q(i) log K)
    with q(i) = q_s + (q_e - q_s) i / E, t0 = (1 - q_s) E / (q_e - q_s) and
    lambda(i) = max(0, (i - t0) / (E - t0)); q_s = 0.6, q_e = 1.5 (the code's defaults).

    [DECISION] (q_s, q_e) = (0.6, 1.5), the code's CIFAR defaults (the paper's per-dataset values
    were not available). q_e must exceed 1 (otherwise the entropy term's t0 lies past the run and
    the formula turns negative-over-negative), and 0 < q_s < q_e.
    Deviations: the harmonised recipe (ResNet-32, 200 epochs, SGD 0.1 Nesterov, wd 5e-4, warm-up,
    x0.1 at 80/100) instead of DAL's official one (ResNet-18, 150 epochs, SGD lr 0.01, momentum 0.9,
    wd 1e-4, cosine annealing to 0, no warm-up); the ramps follow the recipe's epoch count. DAL
    ignores class imbalance and is run unchanged on the imbalanced splits. Expect it to leave the
    rarest classes unlearnt there: once q >= 1 the loss is MAE-like and the gradient of a sample
    scales with p_y^q, which is small for tail classes (digits, IF 10: 0 % on the rarest classes).
    """

    config_class = DALConfig

    def setup(self) -> None:
        super().setup()
        self.q, self.lam = float(self.cfg.q_start), 0.0

    def on_epoch_start(self, phase: Phase, epoch: int) -> None:
        super().on_epoch_start(phase, epoch)
        e, qs, qe = int(self.ctx.recipe.epochs), float(self.cfg.q_start), float(self.cfg.q_end)
        self.q, self.lam = dal_q(epoch, e, qs, qe), dal_lambda(epoch, e, qs, qe)

    def train_step(self, batch, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        loss = dal_loss(self.model(batch.x), batch.y, self.q, self.lam)
        self.step(self.optimizer, loss)
        return {"loss": loss.detach()}

    def on_epoch_end(self, phase: Phase, epoch: int) -> dict[str, float]:
        return {"q": self.q, "lambda": self.lam}
