"""O2U-Net (Huang et al., "O2U-Net: A simple noisy label detection approach for deep neural networks",
ICCV 2019; official code hjimce/O2U-Net main.py; docs/methods.md §8)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.selection import check_explicit_forget_rate, check_forget_rate, method_forget_rate, precision_recall
from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import MISSING, MethodConfig, Number, check_int_at_least, require

PRETRAIN, CYCLIC, RETRAIN = "pretrain", "cyclic", "retrain"
RETRAIN_INITS = ("scratch", "pretrained")


def cyclic_lr(epoch: int, cycle_length: int, lr_max: float, lr_min: float) -> float:
    """The O2U sawtooth: s = (1 + (epoch mod c)) / c, lr = (1 - s) * r1 + s * r2 (0-based epoch of
    the cyclic stage; the paper's t = epoch + 1). Within a cycle it falls linearly from
    0.9 r1 + 0.1 r2 to r2 (0.0091 -> 0.001 with the defaults), then restarts."""
    s = (1 + epoch % cycle_length) / cycle_length
    return (1 - s) * lr_max + s * lr_min


def centre_losses(loss: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """One epoch's recorded losses minus their mean over the samples seen in that epoch (O2U's
    normalisation, official: ``example_loss - example_loss.mean()``); 0 for samples not seen.
    On the device, with no host synchronisation."""
    w = seen.to(loss.dtype)
    mean = (loss * w).sum() / w.sum().clamp_min(1)
    return (loss - mean) * w


def keep_lowest(score: torch.Tensor, tau: float) -> torch.Tensor:
    """Bool mask keeping the int((1 - tau) * n) samples with the lowest score, i.e. dropping the
    highest-scoring ones (ties: the lower position is kept). Official: ``num_remember``."""
    n = int(score.shape[0])
    keep = int((1 - tau) * n)
    order = torch.sort(score, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool, device=score.device)
    mask[order[:keep]] = True
    return mask


@dataclass
class O2UConfig(MethodConfig):
    forget_rate: Optional[Number] = MISSING  # tau in [0, 1); null: split.noise_rate
    pretrain_epochs: Optional[int] = MISSING  # null: max(1, recipe.epochs // 5)
    cycle_length: int = MISSING
    num_cycles: int = MISSING
    lr_max: Number = MISSING
    lr_min: Number = MISSING  # 0 < lr_min <= lr_max
    cyclic_batch_size: int = MISSING
    retrain_init: str = MISSING  # one of RETRAIN_INITS

    def __post_init__(self) -> None:
        check_explicit_forget_rate(self.forget_rate, self.name)
        check_int_at_least(self.pretrain_epochs, "o2u: method.pretrain_epochs", 1, null="max(1, recipe.epochs // 5)")
        for key in ("cycle_length", "num_cycles", "cyclic_batch_size"):
            check_int_at_least(getattr(self, key), f"o2u: method.{key}", 1)
        require(0 < self.lr_min <= self.lr_max, f"o2u: the cyclic lr needs 0 < method.lr_min <= method.lr_max, got "
                f"lr_min={self.lr_min}, lr_max={self.lr_max}")
        require(self.retrain_init in RETRAIN_INITS, f"o2u: method.retrain_init must be one of "
                f"{', '.join(RETRAIN_INITS)}, got {self.retrain_init!r}")


@register_method("o2u")
class O2UNet(Method):
    """O2U-Net (Huang et al., ICCV 2019): pre-train; then train with a cyclical (sawtooth) learning
    rate, recording each sample's loss every epoch; drop the tau fraction with the highest mean
    normalised loss; retrain on the rest (docs/methods.md §8). Three phases:

    1. ``pretrain``: ``pretrain_epochs`` epochs of the recipe (optimiser, batch size, and its lr
       schedule for epochs 0..pretrain_epochs-1) on every sample.
    2. ``cyclic``: ``num_cycles * cycle_length`` epochs continuing from the pre-trained weights with
       a fresh optimiser of the recipe's kind (fresh momentum, as the official fresh SGD), batch
       ``cyclic_batch_size``, lr = ``cyclic_lr`` (c = 10, r1 = 0.01, r2 = 0.001, as official). Each
       sample's CE from the training forward pass (augmented, before the update) is recorded on the
       device; at the end of each epoch the epoch's losses are centred by their mean over the epoch's
       samples and added to per-sample accumulators (sum and count, device tensors, checkpointed).
    3. ``retrain`` (final, reported): the full recipe on ``train_subset()`` = the kept samples, the
       int((1 - tau) n) with the lowest mean normalised loss.

    Privileged knob (docs/methods.md §16.5): tau = ``method.forget_rate``; null (the default) reads the
    nominal noise rate ``split.noise_rate``, as the official code does. tau = 0 keeps every sample.

    [DECISION] "Normalised per step": a step of the cyclical schedule is an epoch (the lr changes
    per epoch), so the losses are normalised per epoch, by subtracting the epoch's global mean, as
    in the official code; not per mini-batch (with batches of 16 the batch mean is mostly noise from
    the batch's composition). The ranking score is the mean of the centred losses over the epochs
    in which the sample was seen (official: their sum; the same ranking when every epoch sees every
    sample, and well defined when ``train.limit_batches`` skips samples; an unseen sample scores 0).
    [DECISION] Budget (the official one is 3 x 249 epochs with ResNet-101): the retraining phase is
    the recipe (200 harmonised epochs, ResNet-32), plus ``pretrain_epochs`` (null: a fifth of
    recipe.epochs, at least 1: 40 harmonised, 6 digits, 1 smoke) and ``num_cycles * cycle_length``
    cyclic epochs (3 cycles x 10 = 30 by default; the digits suite uses 2 cycles x 5 epochs, the
    smoke suite 1 x 1, through ``suite.method_overrides``). Pre-training uses the recipe's lr
    schedule truncated to its length (harmonised: warm-up, then 0.1), not a full schedule that
    decays and memorises the noise.
    [DECISION] The cyclic stage keeps the official batch size 16 (also CurveNet's probe batch), the
    official r1/r2 and the recipe's optimiser kind (Nesterov, wd from the recipe).
    [DECISION] The retraining starts from a fresh random initialisation (``retrain_init: scratch``,
    built in setup), so the final phase is exactly the recipe trained on the cleaned subset and
    compares directly with CE; ``retrain_init: pretrained`` restores the weights at the end of
    pre-training, as the official code does (its checkpoint of stage 1).
    [DECISION] Evaluation: every phase is evaluated each epoch (the network being trained); only the
    retraining phase is reported.
    [DECISION] Diagnostics (clean labels, measured only): in the cyclic stage, after each epoch, the
    precision (fraction of clean samples among those kept) and recall (fraction of clean samples
    kept) of the would-be kept set; in the retraining phase, those of the kept set. Artifacts:
    ``o2u_score`` (mean normalised loss) and ``o2u_kept`` (the kept mask).

    Deviations from the official code (hjimce/O2U-Net, main.py):
    - Phase lengths and backbone (above); official stages 1 and 3 use plain SGD (lr 0.01 -> 0.005 ->
      0.001 at 1/4 and 1/2 of 250 epochs, momentum 0.9, wd 5e-4, batch 128), no augmentation by
      default and no normalisation; here the recipe (SGD 0.1 Nesterov, warm-up, milestones) and
      standard augmentation.
    - The official sawtooth is indexed by epochs 1..249 (t = ((e mod 10) + 1) / 10, so it starts at
      0.0082, one step into the cycle); here epoch 0 of the stage starts the cycle at 0.0091 (the
      paper's s(t) with t = 1).
    - The official code evaluates at the start of each epoch; the engine evaluates after it.
    """

    extra_state = ("stage",)

    def __init__(self, ctx: Any, cfg: Any) -> None:
        super().__init__(ctx, cfg)
        self.stage = PRETRAIN

    config_class = O2UConfig

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        check_forget_rate(cfg)  # null: split.noise_rate, which must then lie in [0, 1)

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self) -> None:
        ctx = self.ctx
        self.tau = method_forget_rate(self.cfg, ctx.split.noise_rate)  # checked at composition
        self.model = ctx.build_model()  # pre-training and the cyclic stage
        self.final_model = ctx.build_model()  # retraining (fresh init; or the pre-trained weights)
        self.opt_pre = ctx.build_optimizer(self.model.parameters())
        self.opt_cyc = ctx.build_optimizer(self.model.parameters(), lr=float(self.cfg.lr_max))
        self.opt_final = ctx.build_optimizer(self.final_model.parameters())
        if self.cfg.retrain_init == "pretrained":
            self.pretrained = ctx.build_model()  # a copy of the weights at the end of pre-training
        n, dev = len(ctx.train), ctx.device
        self.epoch_loss = torch.zeros(n, device=dev)  # this epoch's recorded CE per sample
        self.epoch_seen = torch.zeros(n, dtype=torch.bool, device=dev)
        self.score_sum = torch.zeros(n, dtype=torch.float64, device=dev)  # sum of centred losses
        self.score_count = torch.zeros(n, dtype=torch.int64, device=dev)  # epochs in which it was seen
        self.kept = torch.ones(n, dtype=torch.bool, device=dev)

    def pretrain_epochs(self) -> int:
        e = self.cfg.pretrain_epochs
        return max(1, int(self.ctx.recipe.epochs) // 5) if e is None else int(e)

    def phases(self) -> list[Phase]:
        r = self.ctx.recipe
        return [Phase(PRETRAIN, self.pretrain_epochs(), int(r.batch_size)),
                Phase(CYCLIC, int(self.cfg.num_cycles) * int(self.cfg.cycle_length), int(self.cfg.cyclic_batch_size)),
                Phase(RETRAIN, int(r.epochs), int(r.batch_size), final=True)]

    def on_phase_start(self, phase: Phase) -> None:
        if phase.name == CYCLIC and self.cfg.retrain_init == "pretrained":
            self.pretrained.load_state_dict(self.model.state_dict())
        if phase.name == RETRAIN:
            self.kept = keep_lowest(self.score(), self.tau)
            if self.cfg.retrain_init == "pretrained":
                self.final_model.load_state_dict(self.pretrained.state_dict())

    def train_subset(self, phase: Phase) -> torch.Tensor | None:
        if phase.name == RETRAIN:
            return torch.nonzero(self.kept).flatten()
        return None

    def on_epoch_start(self, phase: Phase, epoch: int) -> None:
        self.stage = phase.name
        if phase.name == PRETRAIN:
            self.ctx.set_lr(self.opt_pre, self.ctx.recipe_lr(epoch))
        elif phase.name == CYCLIC:
            c = self.cfg
            self.ctx.set_lr(self.opt_cyc, cyclic_lr(epoch, int(c.cycle_length), float(c.lr_max), float(c.lr_min)))
            self.epoch_loss.zero_()
            self.epoch_seen.zero_()
        else:
            self.ctx.set_lr(self.opt_final, self.ctx.recipe_lr(epoch))

    def train_step(self, batch: Any, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        if phase.name == RETRAIN:
            model, opt = self.final_model, self.opt_final
        else:
            model, opt = self.model, (self.opt_cyc if phase.name == CYCLIC else self.opt_pre)
        ce = F.cross_entropy(model(batch.x), batch.y, reduction="none")
        loss = ce.mean()
        self.step(opt, loss)
        if phase.name == CYCLIC:  # the loss of the forward pass before the update
            self.epoch_loss[batch.index] = ce.detach()
            self.epoch_seen[batch.index] = True
        return {"loss": loss.detach()}

    def on_epoch_end(self, phase: Phase, epoch: int) -> dict[str, float]:
        if phase.name == CYCLIC:
            self.score_sum += centre_losses(self.epoch_loss, self.epoch_seen).double()
            self.score_count += self.epoch_seen.long()
            return {"lr": self.opt_cyc.param_groups[0]["lr"]}
        opt = self.opt_final if phase.name == RETRAIN else self.opt_pre
        return {"lr": opt.param_groups[0]["lr"]}

    def score(self) -> torch.Tensor:
        """Mean normalised loss per sample over the cyclic epochs seen so far (0 if never seen)."""
        return self.score_sum / self.score_count.clamp_min(1)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"model": self.final_model if self.stage == RETRAIN else self.model}

    def diagnostics(self, phase: Phase, epoch: int, clean: Any) -> dict[str, float]:
        if phase.name == PRETRAIN:
            return {}
        known = clean.labels >= 0
        is_clean = known & ~clean.noisy
        kept = keep_lowest(self.score(), self.tau) if phase.name == CYCLIC else self.kept
        out = precision_recall(kept, known, is_clean)
        out["kept_fraction"] = float(kept.float().mean())
        return out

    def artifacts(self) -> dict[str, np.ndarray]:
        return {"o2u_score": self.score().cpu().numpy(), "o2u_kept": self.kept.cpu().numpy()}
