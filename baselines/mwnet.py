"""Meta-Weight-Net (Shu et al., "Meta-Weight-Net: Learning an Explicit Mapping for Sample Weighting",
NeurIPS 2019) in its two official variants, sharing one implementation (docs/methods.md §9, §10).

Every iteration (the meta step runs every iteration, as in both official codes):

1. virtual step: per-sample CE l_i of the classifier on the training batch, weights w_i = V(l_i; Theta)
   from the weighting network V (Linear 1->100, ReLU, Linear 100->1, sigmoid), and one differentiable
   plain-SGD step theta' = theta - lr_t * grad L_virt (no momentum, no weight decay; lr_t = the
   classifier's current lr), through ``curvebench.engine.virtual`` (no model copy; the virtual and meta
   forwards use cloned BatchNorm buffers, so they never touch the real model's running statistics);
2. meta step: mean CE of theta' on a clean meta batch, back-propagated into Theta only, optimiser step
   on V;
3. real step: a fresh forward of the real model, w_i recomputed by the updated V without gradient,
   the weighted loss, and the recipe optimiser's step on the classifier.

``mwnet_noise`` (MW-Net.py, the "stable version" for ResNet-32): V's input is the detached loss,
L = mean_i w_i l_i (weights not normalised), V trained with Adam (lr 1e-3, wd 1e-4), meta batches
from ``ctx.meta.next_batch`` (a reshuffled pass over the whole shared meta set, batch = the training
batch size, cycled within an epoch when the epoch outlasts the pass). The pass restarts at every
epoch (``meta_restart_each_epoch: true``), as MW-Net.py's ``train()`` creates a new iterator of the
meta loader per epoch (``iter(train_meta_loader)``, re-created on ``StopIteration``): the first meta
batch of each epoch is the first batch of a fresh permutation drawn from the meta generator (the
engine checkpoints that generator and the sampler, so a resume at an epoch boundary is bit-identical).
``meta_restart_each_epoch: false`` cycles across epochs (this benchmark's behaviour before issue 13).

``mwnet_imb`` (meta-weight-net-class-imbalance.py): weights normalised by their batch sum,
L = sum_i w_i l_i / sum_j w_j (left unnormalised when the sum is 0, without a host sync), in both the
virtual and the real loss; V's input in the virtual step keeps its graph to theta (``vnet(cost_v)``,
not ``cost_v.data``), so the virtual gradient also flows through V's input; V trained with SGD
(lr 1e-5, momentum 0.9, Nesterov, wd 5e-4); a fresh random meta batch every iteration
(``random_batch``) from ``meta_per_class`` = 10 clean images per class: the official
``next(iter(train_meta_loader))`` per iteration (a new shuffled loader iterator each time), so there is
no pass to restart and nothing changes at an epoch boundary.

[DECISION] Recipe: the harmonised one (recipe/harmonised.yaml: ResNet-32, batch 128, 200 epochs,
SGD 0.1 Nesterov, wd 5e-4, 5-epoch warm-up, x0.1 at 80 and 100) for both variants, as for every
method (docs/methods.md §9, §16.4). The official recipes differ: MW-Net(noise) trains 120
epochs, batch 100, SGD momentum 0.9 without Nesterov, decays at 80/100; MW-Net(imb) 100 epochs,
batch 100, Nesterov, decays at 80/90. The meta batch size is the training batch size (100 in both
official codes, 128 here).

[DECISION] MW-Net(imb) meta set: ``meta_per_class: 10`` (the official ``num_meta = 10`` per class)
taken as ``ctx.meta.per_class(10)``, the first 10 images of each class of the split's shared meta set,
so that the split (and every other method's training set) stays identical. ``meta_per_class: null``
uses the whole shared CurveNet meta set instead (docs/methods.md §10, so that all meta methods
see identical meta data). For CIFAR-100 (10 per class in the shared set) both settings coincide.

Deviations from the official codes:
- no model copy per iteration (``FunctionalModel``); the official code builds a new network every
  iteration and loads the state dict, with the same result (its BN buffers are those of the copy);
- the virtual step's lr is the recipe's current lr; MW-Net(imb)'s code uses an epoch-indexing
  off-by-one between the real lr (decayed at 0-indexed epochs 79/89) and the virtual lr (80/90), which
  is not reproduced;
- the zero-sum guard of MW-Net(imb) is ``torch.where`` on the device instead of a Python ``if``.

Phases (``ctx.mark_phase``, timed by ``curvebench perf``): ``meta_loss`` (meta
batch, virtual step and meta forward), ``meta_backward`` (with V's optimiser step), ``real``.

Diagnostics (clean labels, measurement only): the mean V-Net output (the raw weight in (0, 1), before
MW-Net(imb)'s normalisation) given in the real step to clean and to noisy training samples in each
epoch. Artifacts: the last epoch's per-sample weights and V's weight function on a loss grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.engine.data import Batch
from curvebench.engine.fastpath import no_tf32
from curvebench.engine.meta_step import MetaNet, MetaProblem, MetaStep, meta_compile_options
from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import MISSING, MethodConfig, Number, check_int_at_least, require
from curvebench.engine.phase_timer import FUSED_META
from curvebench.engine.reweighting import mean_weight_by_noise
from curvebench.engine.virtual import FunctionalModel, SGDRule, meta_backward
from curvebench.errors import ConfigError

VNET_OPTIMIZERS = ("adam", "sgd")


class WeightNet(nn.Module):
    """MW-Net's V-Net: per-sample loss [B] -> weight in (0, 1) [B]; Linear(1, h), ReLU, Linear(h, 1),
    sigmoid, with PyTorch's default Linear initialisation (as the official MetaLinear layers)."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.linear1 = nn.Linear(1, hidden)
        self.linear2 = nn.Linear(hidden, 1)

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear2(F.relu(self.linear1(loss.unsqueeze(1))))).squeeze(1)


def weighted_loss(weights: torch.Tensor, losses: torch.Tensor, normalize: bool) -> torch.Tensor:
    """mean_i w_i l_i (MW-Net noise), or sum_i w_i l_i / sum_j w_j, unnormalised when the sum is 0
    (MW-Net imb); no host sync."""
    if not normalize:
        return (weights * losses).mean()
    total = weights.sum()
    safe = torch.where(total != 0, total, torch.ones_like(total))
    return (weights / safe * losses).sum()


@no_tf32()  # the meta pass stays fp32 (also V's forward)
def mwnet_meta_loss(fm: FunctionalModel, params: dict[str, torch.Tensor], vnet: WeightNet, x: torch.Tensor,
                    y: torch.Tensor, meta_x: torch.Tensor, meta_y: torch.Tensor, lr: float, normalize: bool,
                    detach_input: bool) -> torch.Tensor:
    """The meta loss of one MW-Net iteration: CE on the meta batch of the model after one plain-SGD
    virtual step on the V-weighted training loss. Differentiable with respect to V's parameters."""
    losses = F.cross_entropy(fm(x, params), y, reduction="none")
    weights = vnet(losses.detach() if detach_input else losses)
    new = fm.virtual_step(weighted_loss(weights, losses, normalize), params, SGDRule(lr))
    return F.cross_entropy(fm(meta_x, new), meta_y)


@dataclass
class MetaWeightNetConfig(MethodConfig):
    """``mwnet_imb``'s keys; ``mwnet_noise`` adds ``meta_restart_each_epoch``."""

    hidden: int = MISSING  # V-Net width, >= 1
    vnet_optimizer: str = MISSING  # one of VNET_OPTIMIZERS
    vnet_lr: Number = MISSING  # > 0
    vnet_weight_decay: Number = MISSING
    vnet_momentum: Number = MISSING  # sgd only
    vnet_nesterov: bool = MISSING  # sgd only
    meta_per_class: Optional[int] = MISSING  # null: the whole meta set; checked against the split in check_config
    meta_batch_size: Optional[int] = MISSING  # null: the training batch size

    def __post_init__(self) -> None:
        require(self.hidden >= 1, f"method.hidden must be >= 1 (MW-Net uses 100), got {self.hidden}")
        require(self.vnet_optimizer in VNET_OPTIMIZERS,
                f"method.vnet_optimizer must be one of {VNET_OPTIMIZERS}, got {self.vnet_optimizer!r}")
        require(self.vnet_lr > 0, f"method.vnet_lr must be positive, got {self.vnet_lr}")
        check_int_at_least(self.meta_batch_size, "method.meta_batch_size", 1, null="= the training batch size")
        check_int_at_least(self.meta_per_class, "method.meta_per_class", 1, null="the whole meta set")


@dataclass
class MetaWeightNetNoiseConfig(MetaWeightNetConfig):
    meta_restart_each_epoch: bool = MISSING  # a fresh shuffled pass of the meta set at each epoch


def mwnet_virtual_loss(vnet: MetaNet, logits: torch.Tensor, y: torch.Tensor, extra: tuple, *, normalize: bool,
                       detach_input: bool) -> tuple[torch.Tensor, tuple]:
    """MW-Net's piece of the pure meta step (``train.compile_meta``; ``engine/meta_step.py``): the V-weighted
    training loss of the virtual step, as in ``mwnet_meta_loss``."""
    losses = F.cross_entropy(logits, y, reduction="none")
    weights = vnet(losses.detach() if detach_input else losses)
    return weighted_loss(weights, losses, normalize), ()


class _MetaWeightNet(Method):
    """Shared MW-Net machinery; the variants set the class attributes below."""

    needs_meta = True
    uses_clean_meta = True
    normalize: ClassVar[bool] = False  # weights / batch sum (imbalance variant)
    detach_input: ClassVar[bool] = True  # V-Net input detached in the virtual step (noise variant)
    random_meta_batches: ClassVar[bool] = False  # a fresh random meta batch each iteration (imbalance)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        k = cfg.method.meta_per_class
        if k is not None:
            split_k = int(cfg.split.meta_per_class)
            if split_k >= 0 and int(k) > split_k:  # -1: the whole declared clean set of an image-folder dataset
                raise ConfigError(f"method.meta_per_class={k} exceeds the split's meta set ({split_k} per class); "
                                  f"set method.meta_per_class <= {split_k}, or null for the whole meta set")

    def setup(self) -> None:
        super().setup()
        cfg, ctx = self.cfg, self.ctx
        self.vnet = WeightNet(int(cfg.hidden)).to(ctx.device)
        if cfg.vnet_optimizer == "adam":
            self.vnet_optimizer = torch.optim.Adam(self.vnet.parameters(), lr=float(cfg.vnet_lr),
                                                   weight_decay=float(cfg.vnet_weight_decay))
        else:
            self.vnet_optimizer = torch.optim.SGD(self.vnet.parameters(), lr=float(cfg.vnet_lr),
                                                  momentum=float(cfg.vnet_momentum), nesterov=bool(cfg.vnet_nesterov),
                                                  weight_decay=float(cfg.vnet_weight_decay))
        k = cfg.get("meta_per_class")
        self.meta_sampler = ctx.meta if k is None else ctx.meta.per_class(int(k))
        n = len(ctx.train)
        self.sample_weight = torch.full((n,), float("nan"), device=ctx.device)  # V's output, this epoch
        self.meta_loss_sum = torch.zeros((), device=ctx.device)
        self._steps = 0
        self._fm = FunctionalModel(self.model)
        options = meta_compile_options(ctx.cfg.train)  # train.compile_meta: the compiled pure meta step
        problem = MetaProblem(functools.partial(mwnet_virtual_loss, normalize=self.normalize,
                                                detach_input=self.detach_input))
        self._compiled_meta = None if options is None else MetaStep(self._fm, self.vnet, problem, options)

    def on_epoch_start(self, phase: Phase, epoch: int) -> None:
        super().on_epoch_start(phase, epoch)
        if not self.random_meta_batches and bool(self.cfg.get("meta_restart_each_epoch", False)):
            self.meta_sampler.restart()  # MW-Net.py's iter() per epoch
        self.sample_weight.fill_(float("nan"))
        self.meta_loss_sum.zero_()
        self._steps = 0

    def _meta_batch(self, batch_size: int) -> Batch:
        if self.random_meta_batches:
            return self.meta_sampler.random_batch(batch_size)
        return self.meta_sampler.next_batch(batch_size)

    def train_step(self, batch: Batch, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        fm = self._fm
        mark = self.ctx.mark_phase  # phase timing (engine/phase_timer.py)
        # the meta batch, the virtual step and the meta forward (one function); compiled, the whole meta step
        mark("meta_loss" if self._compiled_meta is None else FUSED_META)
        meta = self._meta_batch(int(self.cfg.get("meta_batch_size") or phase.batch_size))
        lr = self.optimizer.param_groups[0]["lr"]
        if self._compiled_meta is not None:  # train.compile_meta: the meta phases as one compiled call
            result = self._compiled_meta(batch.x, batch.y, meta.x, meta.y, SGDRule(lr))
            meta_loss = result.meta_loss
            self.vnet_optimizer.zero_grad(set_to_none=True)
            result.set_grads(self.vnet)
        else:
            meta_loss = mwnet_meta_loss(fm, fm.params(), self.vnet, batch.x, batch.y, meta.x, meta.y, lr,
                                        self.normalize, self.detach_input)
            mark("meta_backward")
            self.vnet_optimizer.zero_grad(set_to_none=True)
            meta_backward(meta_loss, self.vnet.parameters())
        self.vnet_optimizer.step()

        mark("real")
        losses = F.cross_entropy(self.model(batch.x), batch.y, reduction="none")
        with torch.no_grad():
            weights = self.vnet(losses.detach())
        loss = weighted_loss(weights, losses, self.normalize)
        self.step(self.optimizer, loss)
        self.sample_weight[batch.index] = weights.to(self.sample_weight.dtype)  # bf16 under autocast
        self.meta_loss_sum += meta_loss.detach()
        self._steps += 1
        return {"loss": loss.detach()}

    def on_epoch_end(self, phase: Phase, epoch: int) -> dict[str, float]:
        return {"meta_loss": float(self.meta_loss_sum) / max(1, self._steps)}

    def diagnostics(self, phase: Phase, epoch: int, clean: Any) -> dict[str, Any]:
        seen = ~torch.isnan(self.sample_weight)
        out: dict[str, Any] = {}
        if bool(seen.any()):
            out["mean_weight"] = float(self.sample_weight[seen].mean())
        out.update(mean_weight_by_noise(self.sample_weight, clean, seen))
        return out

    def artifacts(self) -> dict[str, np.ndarray]:
        grid = torch.linspace(0.0, 10.0, 201, device=self.ctx.device)
        with torch.no_grad():
            curve = self.vnet(grid)
        return {"sample_weight": self.sample_weight.cpu().numpy(), "weight_curve_loss": grid.cpu().numpy(),
                "weight_curve": curve.cpu().numpy()}


@register_method("mwnet_noise")
class MetaWeightNetNoise(_MetaWeightNet):
    """MW-Net, noise variant (MW-Net.py): the class attributes below; the module docstring and
    docs/methods.md §9 give the method, its decisions and deviations."""

    config_class = MetaWeightNetNoiseConfig
    normalize = False
    detach_input = True
    random_meta_batches = False


@register_method("mwnet_imb")
class MetaWeightNetImbalance(_MetaWeightNet):
    """MW-Net, class-imbalance variant (meta-weight-net-class-imbalance.py): the class attributes
    below; the module docstring and docs/methods.md §10 give the method, its decisions and deviations."""

    config_class = MetaWeightNetConfig
    normalize = True
    detach_input = False
    random_meta_batches = True
