"""Co-teaching (Han et al., "Co-teaching: Robust training of deep neural networks with extremely
noisy labels", NeurIPS 2018; official code bhanML/Co-teaching; docs/methods.md §7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.selection import (
    check_explicit_forget_rate,
    check_forget_rate,
    method_forget_rate,
    precision_recall,
    small_loss_positions,
)
from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import MISSING, MethodConfig, Number, require


def keep_rate(epoch: int, tau: float, t_k: float) -> float:
    """R(T) = 1 - min(T / T_k, 1) * tau, with T the 0-based epoch (R = 1 in the first epoch)."""
    return 1.0 - min(epoch / t_k, 1.0) * tau


def num_keep(rate: float, batch_size: int) -> int:
    """int(R * B) samples kept of a batch of B, at least one (a mean over nothing is NaN)."""
    return max(1, int(rate * batch_size))


def coteaching_losses(logits1: torch.Tensor, logits2: torch.Tensor, y: torch.Tensor,
                      keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cross update. Each network ranks the batch by its own per-sample CE and picks the ``keep``
    smallest; network 1 is trained on network 2's pick and network 2 on network 1's.

    Returns (loss of net 1, loss of net 2, positions picked by net 1, positions picked by net 2);
    each loss is the mean CE over the peer's pick (no extra 1/keep factor, see the class docstring).
    """
    ce1 = F.cross_entropy(logits1, y, reduction="none")
    ce2 = F.cross_entropy(logits2, y, reduction="none")
    pick1 = small_loss_positions(ce1, keep)
    pick2 = small_loss_positions(ce2, keep)
    return ce1[pick2].mean(), ce2[pick1].mean(), pick1, pick2


@dataclass
class CoTeachingConfig(MethodConfig):
    forget_rate: Optional[Number] = MISSING  # tau in [0, 1); null: split.noise_rate
    num_gradual: Number = MISSING  # T_k in epochs, > 0

    def __post_init__(self) -> None:
        check_explicit_forget_rate(self.forget_rate, self.name)
        require(self.num_gradual > 0,
                f"coteaching: method.num_gradual (T_k, in epochs) must be > 0, got {self.num_gradual!r}")


@register_method("coteaching")
class CoTeaching(Method):
    """Co-teaching (Han et al., NeurIPS 2018): two networks with different random initialisations;
    in every mini-batch each network keeps the R(T) fraction of samples with the smallest CE under
    its own predictions, and its peer is updated on them (docs/methods.md §7).

    Keep rate: R(T) = 1 - min(T/T_k, 1) * tau (paper Eq. / official ``rate_schedule`` with c = 1).

    Privileged knob (docs/methods.md §16.5): tau = ``method.forget_rate``; null (the default) reads the
    nominal noise rate ``split.noise_rate``, as the official code does (``forget_rate=None`` ->
    ``noise_rate``). With p = 0, Co-teaching trains both networks on every sample. The same tau is
    used under class imbalance (selection is class-agnostic, as in the official code).

    [DECISION] Harmonised recipe (docs/methods.md §16.4): both networks use the recipe's optimiser and
    lr schedule (SGD 0.1 Nesterov, wd 5e-4, warm-up, x0.1 at the milestones), the configured model
    (ResNet-32) and the standard crop + flip augmentation, with batches of ``recipe.batch_size``.
    [DECISION] T is the 0-based epoch: the first epoch keeps every sample, tau is reached at T = T_k.
    [DECISION] T_k = ``num_gradual`` = 10 epochs (official) for every recipe length, not scaled with
    recipe.epochs: the ramp must outlast the networks' early learning, which is counted in passes
    over the data, not in fractions of the run. (Scaling it to 10/200 of the 30-epoch digits recipe,
    1.5 epochs, made both networks drop one whole class, 0 % test accuracy on it, because small-loss
    selection began before they had learned it.) Digits: R = 1 - tau * T/10 for T < 10, then 1 - tau
    for the last 20 epochs; smoke (1 epoch): T = 0 keeps every sample.
    [DECISION] Per batch, keep = max(1, int(R * B)) with B the batch's own size (the last, smaller
    batch of an epoch included); the selection is a stable sort on the device (ties: lower position),
    with no host synchronisation.
    [DECISION] Network 1 is reported; network 2 is evaluated every epoch too (``eval_models``: net1
    first, net2 second), and the engine records it in ``metrics.extra_models.net2``. The logged
    training loss is the mean of the two networks' losses.
    [DECISION] Diagnostics (clean labels, measured only): per epoch and per network, the precision
    (fraction of clean samples among those the network picked) and recall (fraction of the clean
    samples seen in the epoch that it picked) of its small-loss selection over the whole epoch.
    "Picked by net k" = ranked small-loss by net k (the samples net k hands to its peer).

    Deviations from the official code (bhanML/Co-teaching, main.py and loss.py):
    - Official recipe not used: Adam lr 1e-3, betas (0.9, 0.999), lr decayed linearly to 0 from epoch
      80 (CIFAR-100: 100) to 200 with beta1 switched to 0.1 at that epoch; the 9-layer CNN (dropout
      0.25, LeakyReLU); no augmentation and no normalisation.
    - [BUG] fixed: the official loss is the mean CE over the kept samples divided once more by
      num_remember; here it is the plain mean. (Adam is nearly invariant to that constant factor; with
      SGD it would divide the lr by about 100.)
    - The official ramp is linspace(0, tau**c, num_gradual) indexed by the training epoch, which
      starts at 1 (epoch 0 only evaluates): its first training epoch already forgets tau/9 and tau is
      reached at its 9th. Here the first epoch forgets nothing and tau is reached at T = T_k.
      The exponent c (default 1) is not implemented.
    - The official train and test loaders drop the last incomplete batch (the test set is scored on
      9,984 images) and cap an epoch at 400 iterations; the engine keeps every sample.
    - Official pure ratios are per batch; the precision/recall here are over the epoch.
    """

    def __init__(self, ctx: Any, cfg: Any) -> None:
        super().__init__(ctx, cfg)
        self.keep = 1.0

    config_class = CoTeachingConfig

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        check_forget_rate(cfg)  # null: split.noise_rate, which must then lie in [0, 1)

    def setup(self) -> None:
        self.tau = method_forget_rate(self.cfg, self.ctx.split.noise_rate)  # checked at composition
        self.t_k = float(self.cfg.num_gradual)
        self.net1 = self.ctx.build_model()
        self.net2 = self.ctx.build_model()  # built second: a different random initialisation
        self.opt1 = self.ctx.build_optimizer(self.net1.parameters())
        self.opt2 = self.ctx.build_optimizer(self.net2.parameters())
        n, dev = len(self.ctx.train), self.ctx.device
        # per-sample selection masks of the current epoch (for the diagnostics; reset every epoch)
        self.picked1 = torch.zeros(n, dtype=torch.bool, device=dev)
        self.picked2 = torch.zeros(n, dtype=torch.bool, device=dev)
        self.seen = torch.zeros(n, dtype=torch.bool, device=dev)

    def on_epoch_start(self, phase: Phase, epoch: int) -> None:
        lr = self.ctx.recipe_lr(epoch)
        self.ctx.set_lr(self.opt1, lr)
        self.ctx.set_lr(self.opt2, lr)
        self.keep = keep_rate(epoch, self.tau, self.t_k)
        for mask in (self.picked1, self.picked2, self.seen):
            mask.zero_()

    def train_step(self, batch: Any, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        k = num_keep(self.keep, batch.y.shape[0])  # host float x the batch's shape: no sync
        loss1, loss2, pick1, pick2 = coteaching_losses(self.net1(batch.x), self.net2(batch.x), batch.y, k)
        self.step(self.opt1, loss1)
        self.step(self.opt2, loss2)
        self.picked1[batch.index[pick1]] = True
        self.picked2[batch.index[pick2]] = True
        self.seen[batch.index] = True
        return {"loss": 0.5 * (loss1.detach() + loss2.detach())}

    def on_epoch_end(self, phase: Phase, epoch: int) -> dict[str, float]:
        return {"keep_rate": self.keep, "lr": self.opt1.param_groups[0]["lr"]}

    def eval_models(self) -> dict[str, nn.Module]:
        return {"net1": self.net1, "net2": self.net2}

    def diagnostics(self, phase: Phase, epoch: int, clean: Any) -> dict[str, float]:
        known = clean.labels >= 0
        is_clean = known & ~clean.noisy
        out: dict[str, float] = {"keep_rate": self.keep}
        for net, picked in (("net1", self.picked1), ("net2", self.picked2)):
            for key, value in precision_recall(picked, self.seen & known, is_clean).items():
                out[f"{key}_{net}"] = value
        return out
