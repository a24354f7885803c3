"""Dynamic Loss (Jiang et al., "Dynamic Loss For Robust Learning", IEEE TPAMI 2023, arXiv 2211.12506;
official code jiangwenj02/dynamic_loss, mmcls-based), docs/methods.md §12.

A meta-learned label corrector (LC) and margin generator (MG), trained on a pseudo-meta set that
hierarchical sampling (HS) draws from the noisy training data every epoch.

- Ranks (§12.2): at the start of every epoch the classifier, in eval mode, computes each training
  sample's CE on its weak view (normalised, not augmented: ``ctx.train.view(i, augment=False)``)
  against the observed label; within each observed class of n_k samples, sorted by ascending loss,
  the sample at position j gets rank floor(j / (n_k + 1) * R), R = ``rank_num`` = 100.
- LC (§12.3): a rank embedding E in R^{R x h} (Xavier-uniform), an MLP h -> h -> h -> K (ReLU,
  Xavier-normal weights, biases 0, 0 and 3.98), a sigmoid per class (``lc_classwise``); the confidence
  a_i is the entry of the observed label. Corrected target t_i = a_i onehot(y_i) + (1 - a_i) q_i with
  q_i a hard Gumbel-softmax sample (tau = 1) from the detached weak-view logits (the plain softmax in
  warm-up).
- MG (§12.4): a class feature c in R^{1 x h} (Xavier-uniform) and an MLP h -> h -> h -> K (Xavier-normal,
  biases 0, 0 and 1); the same margin m is added to every sample's logits.
- HS (§12.5): with n_min the smallest observed class count, m1 = floor(0.5 n_min) random samples per
  observed class, of which the m2 = floor(0.5 n_min 0.5) with the lowest (epoch-start) loss form the
  epoch's pseudo-meta set (observed labels), which is removed from that epoch's training set.
- Warm-up epochs (§12.6): CE on the training view; while the global iteration is below
  ``lc_warmup_iters`` (2000) the LC is also trained (Adam) to reproduce the observed label,
  -log(t_y + 1e-8) with q = softmax of the weak-view logits.
- Meta epochs, every iteration: a virtual step of the recipe's optimiser (current lr, momentum
  buffers, weight decay; ``higher`` in the official code) on mean soft-CE(f(weak) + m, t); the meta
  loss is the hard CE of the virtual model on a pseudo-meta batch (training view, observed labels, no
  margin), back-propagated into LC and MG (Adam, lr 3e-3, wd 0); then the real step on
  soft-CE(f(training view) + m, t) with t and m recomputed by the updated meta-net without gradient
  (a new Gumbel draw on the same pre-update weak-view logits).
- After each meta epoch, one fine-tuning pass over the epoch's pseudo-meta set: training view,
  observed one-hot labels, logits + m (m without gradient).

Classifier head (``head_init_std``, default 0.01): the official head is mmcls's ``LinearClsHead``
(``linear_head.py``), initialised by its ``init_cfg`` Normal(layer='Linear', std=0.01), i.e. weight
~ N(0, 0.01^2) (std 0.01) and bias 0 (mmcv's normal init default); the backbone's final Linear is
re-initialised so after it is built (the rest of the backbone keeps the registry's init).
``head_init_std: null`` keeps the backbone's own init (this benchmark's behaviour before issue 13).

[DECISION] No clean meta set by default (docs/methods.md §12.7, option (a), what the official code does):
``needs_meta = uses_clean_meta = False``. ``union_clean_meta: true`` adds the split's clean meta set
to every epoch's pseudo-meta set (option (b); then the method uses clean meta data).

[DECISION] Recipe: the harmonised one (ResNet-32, batch 128 for training and meta batches, 200 epochs,
multistep lr with the recipe's warm-up, random crop + flip), not the official one (AutoAugment +
Cutout 16 on the training view, batch 512, 325 epochs, cosine annealing after a 5-epoch linear
warm-up). The "strong" view is therefore the harness's standard training augmentation.

[DECISION] Warm-up length: ``warm_epochs: null`` takes the recipe's lr warm-up length
(``recipe.warmup_epochs``: 5 in the harmonised recipe, equal to the official warm_epoch = 5 and the
official 5-epoch lr warm-up; 2 in the digits recipe; 0 in the smoke recipe).

Deviations from the official code:
- the virtual step follows the recipe optimiser, so it uses Nesterov momentum under the harmonised
  recipe (the official SGD has none);
- the warm-up's weak-view forward (for the LC's training) is a functional forward with cloned
  BatchNorm buffers, so the real model's running statistics come from its training view only (the
  official code runs it on the real model in train mode, updating them with weak-view batches);
- the official runner computes the epoch-start losses twice in meta epochs (the same eval-mode values,
  a second random level-1 draw); here once;
- the training positions of an epoch (all samples but the pseudo-meta set) are chosen in
  ``on_epoch_start`` and returned by ``train_subset``, which the engine reads every epoch; a
  device-side counter checks in every meta epoch that no pseudo-meta sample was trained on.

Phases of a meta step (``ctx.mark_phase``, timed by ``curvebench perf``):
``meta_loss`` (weak view, meta batch, virtual step and meta forward), ``meta_backward`` (with the
meta-net's Adam step), ``real``.

Diagnostics (clean labels, measurement only): the label-correction accuracy, the fraction of samples
whose corrected target's argmax equals the clean label (``lc_acc``), separately on noisy
(``lc_acc_noisy``) and clean (``lc_acc_clean``) samples, over the targets computed in the epoch (the
real step's targets in meta epochs, the LC-training targets in warm-up); and ``hs_clean_rate``, the
fraction of the pseudo-meta set whose observed label is correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.engine.data import Batch, ImageSource, MetaSampler
from curvebench.engine.evaluate import evaluating
from curvebench.engine.fastpath import no_tf32
from curvebench.engine.meta_step import MetaNet, MetaProblem, MetaStep, meta_compile_options
from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import MISSING, MethodConfig, Number, check_int_at_least, require
from curvebench.engine.ops import one_hot
from curvebench.engine.phase_timer import FUSED_META
from curvebench.engine.virtual import FunctionalModel, SGDRule, meta_backward, momentum_buffers
from curvebench.errors import ConfigError


def _mlp(h: int, out: int, final_bias: float) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, out))
    for i in (0, 2, 4):
        nn.init.xavier_normal_(net[i].weight)
    nn.init.zeros_(net[0].bias)
    nn.init.zeros_(net[2].bias)
    nn.init.constant_(net[4].bias, final_bias)
    return net


class DynamicLossNet(nn.Module):
    """The meta-net: label corrector (rank embedding + MLP, per-class sigmoid) and margin generator."""

    def __init__(self, num_classes: int, h_dim: int = 64, rank_num: int = 100, use_lc: bool = True,
                 use_mg: bool = True, lc_classwise: bool = True, lc_bias: float = 3.98, mg_bias: float = 1.0) -> None:
        super().__init__()
        self.num_classes, self.rank_num = num_classes, rank_num
        self.use_lc, self.use_mg, self.lc_classwise = use_lc, use_mg, lc_classwise
        self.register_buffer("no_margin", torch.zeros(1, num_classes), persistent=False)
        if use_lc:
            self.rank_emb = nn.Parameter(torch.empty(rank_num, h_dim))
            nn.init.xavier_uniform_(self.rank_emb)
            self.lc = _mlp(h_dim, num_classes if lc_classwise else 1, lc_bias)
        if use_mg:
            self.cls_emb = nn.Parameter(torch.empty(1, h_dim))
            nn.init.xavier_uniform_(self.cls_emb)
            self.mg = _mlp(h_dim, num_classes, mg_bias)

    def confidence(self, rank: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """a_i in (0, 1): the LC's sigmoid output for the observed label (or its single output)."""
        a = torch.sigmoid(self.lc(self.rank_emb[rank]))
        return a.gather(1, y.unsqueeze(1)).squeeze(1) if self.lc_classwise else a.squeeze(1)

    def target(self, rank: torch.Tensor, y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """t_i = a_i onehot(y_i) + (1 - a_i) q_i (the observed one-hot label without the LC)."""
        onehot = one_hot(y, self.num_classes, q.dtype)
        if not self.use_lc:
            return onehot
        a = self.confidence(rank, y).unsqueeze(1)
        return a * onehot + (1 - a) * q

    def margin(self) -> torch.Tensor:
        """m [1, K], the same for every sample (zeros without the MG)."""
        return self.mg(self.cls_emb) if self.use_mg else self.no_margin

    def forward(self, rank: torch.Tensor, y: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrected targets, margin): the meta-net as one call (the pure meta step's ``functional_call``)."""
        return self.target(rank, y, q), self.margin()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample -sum_k t_k log softmax(z)_k."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1)


def gumbel_noise(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """g ~ Gumbel(0, 1) of ``shape``, from ``generator``."""
    return -torch.empty(shape, dtype=dtype, device=device).exponential_(generator=generator).log()


def hard_sample(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """onehot(argmax(z + g)) for Gumbel noise g."""
    return one_hot((logits + noise).argmax(1), logits.shape[1], logits.dtype)


def gumbel_hard(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A hard Gumbel-softmax sample (tau = 1): onehot(argmax(z + g)), g ~ Gumbel(0, 1), from ``generator``."""
    return hard_sample(logits, gumbel_noise(tuple(logits.shape), logits.dtype, logits.device, generator))


def class_ranks(loss: torch.Tensor, labels: torch.Tensor, num_classes: int, rank_num: int) -> torch.Tensor:
    """Per-class loss ranks: within class k (n_k samples, ascending loss, ties by position), the sample
    at sorted position j gets floor(j / (n_k + 1) * rank_num)."""
    order = torch.argsort(loss, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]  # by class, then by loss
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    cls = labels[order]
    j = torch.arange(labels.shape[0], device=labels.device) - starts[cls]
    ranks = torch.floor(j.double() / (counts[cls].double() + 1) * rank_num).long()
    out = torch.empty_like(labels)
    out[order] = ranks
    return out


def hs_sizes(n_min: int, first_ratio: float, second_ratio: float) -> tuple[int, int]:
    """(m1, m2) = (int(r1 n_min), int(r1 n_min r2)), as the official runner computes them."""
    return int(first_ratio * n_min), int(first_ratio * n_min * second_ratio)


def hierarchical_sample(loss: torch.Tensor, labels: torch.Tensor, num_classes: int, m1: int, m2: int,
                        generator: torch.Generator) -> torch.Tensor:
    """Positions of the pseudo-meta set (sorted): per observed class, m1 random samples, then the m2 of
    them with the lowest loss."""
    chosen = []
    for c in range(num_classes):
        pos = torch.nonzero(labels == c).flatten()
        perm = torch.randperm(pos.shape[0], generator=generator, device=generator.device).to(pos.device)
        sel = pos[perm[:m1]]
        chosen.append(sel[torch.argsort(loss[sel], stable=True)[:m2]])
    return torch.cat(chosen).sort().values


def init_head(model: nn.Module, std: float) -> nn.Linear:
    """The official head init (mmcls ``LinearClsHead``): weight ~ N(0, std^2), bias 0, in place."""
    head = getattr(model, model.classifier)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"method.head_init_std needs a Linear classifier, but {type(model).__name__}."
                          f"{model.classifier} is a {type(head).__name__}; set method.head_init_std=null")
    with torch.no_grad():
        nn.init.normal_(head.weight, 0.0, std)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    return head


@no_tf32()  # the meta pass stays fp32 (also the meta-net's forward)
def dynamic_meta_loss(fm: FunctionalModel, params: dict[str, torch.Tensor], metanet: DynamicLossNet,
                      x_weak: torch.Tensor, y: torch.Tensor, rank: torch.Tensor,
                      sample_q: Callable[[torch.Tensor], torch.Tensor], meta_x: torch.Tensor, meta_y: torch.Tensor,
                      rule: SGDRule,
                      buffers: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One Dynamic Loss meta iteration up to the meta loss, differentiable w.r.t. the meta-net: the
    weak-view forward, q = ``sample_q(detached logits)``, a virtual step on mean soft-CE(f(weak) + m, t),
    then the hard CE of the virtual model on the meta batch. Returns (meta loss, detached weak logits)."""
    logits = fm(x_weak, params)
    target = metanet.target(rank, y, sample_q(logits.detach()))
    virt = soft_cross_entropy(logits + metanet.margin(), target).mean()
    new = fm.virtual_step(virt, params, rule, buffers)
    return F.cross_entropy(fm(meta_x, new), meta_y), logits.detach()


@dataclass
class DynamicLossConfig(MethodConfig):
    use_lc: bool = MISSING
    use_mg: bool = MISSING
    lc_classwise: bool = MISSING
    h_dim: int = MISSING  # >= 1
    rank_num: int = MISSING  # >= 1
    lc_bias: Number = MISSING
    mg_bias: Number = MISSING
    meta_lr: Number = MISSING  # > 0
    meta_weight_decay: Number = MISSING
    warm_epochs: Optional[int] = MISSING  # null: recipe.warmup_epochs; checked against the recipe in check_config
    lc_warmup_iters: int = MISSING
    first_select_ratio: Number = MISSING  # in (0, 1]
    second_select_ratio: Number = MISSING  # in (0, 1]
    finetune: bool = MISSING
    meta_batch_size: Optional[int] = MISSING  # null: the training batch size
    union_clean_meta: bool = MISSING  # true needs a clean meta set (check_config)
    head_init_std: Optional[Number] = MISSING  # null: the backbone's init; else > 0

    def __post_init__(self) -> None:
        for key in ("first_select_ratio", "second_select_ratio"):
            value = getattr(self, key)
            require(0 < value <= 1, f"method.{key} must be in (0, 1] (official: 0.5), got {value}")
        for key in ("rank_num", "h_dim"):
            require(getattr(self, key) >= 1, f"method.{key} must be >= 1, got {getattr(self, key)}")
        require(self.meta_lr > 0, f"method.meta_lr must be positive, got {self.meta_lr}")
        require(self.head_init_std is None or self.head_init_std > 0, "method.head_init_std must be null (the "
                f"backbone's init) or > 0 (official: 0.01), got {self.head_init_std}")
        check_int_at_least(self.meta_batch_size, "method.meta_batch_size", 1, null="= the training batch size")


def dynamic_virtual_loss(metanet: MetaNet, logits: torch.Tensor, y: torch.Tensor,
                         extra: tuple) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
    """Dynamic Loss's piece of the pure meta step (``train.compile_meta``; ``engine/meta_step.py``), as in
    ``dynamic_meta_loss``: ``extra`` = (ranks [B], Gumbel noise [B, K] drawn outside from the method's
    generator). Returns (mean soft-CE(f(weak) + m, t), (the detached weak logits,))."""
    rank, noise = extra
    target, margin = metanet(rank, y, hard_sample(logits.detach(), noise))
    return soft_cross_entropy(logits + margin, target).mean(), (logits.detach(),)


@register_method("dynamic_loss")
class DynamicLoss(Method):
    """Dynamic Loss: the module docstring and docs/methods.md §12 give the method, its decisions and
    deviations."""

    needs_meta = False
    uses_clean_meta = False
    extra_state = ("iteration",)

    def __init__(self, ctx: Any, cfg: Any) -> None:
        super().__init__(ctx, cfg)
        if bool(cfg.union_clean_meta) and ctx.meta is None:
            raise ConfigError("dynamic_loss with union_clean_meta=true needs a clean meta set, but this split has "
                              "none; set split.meta_per_class to k > 0 or method.union_clean_meta=false")

    config_class = DynamicLossConfig

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        m = cfg.method
        w = m.warm_epochs
        if w is not None and not 0 <= int(w) <= int(cfg.recipe.epochs):
            raise ConfigError(f"method.warm_epochs must be null (= recipe.warmup_epochs) or in "
                              f"0..recipe.epochs={cfg.recipe.epochs}, got {w}")
        if bool(m.union_clean_meta) and int(cfg.split.meta_per_class) == 0:
            raise ConfigError("method.union_clean_meta=true needs a clean meta set; set split.meta_per_class "
                              "to k > 0 or method.union_clean_meta=false")

    # -- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        cfg, ctx = self.cfg, self.ctx
        dev = ctx.device
        std = cfg.get("head_init_std")
        if std is not None:
            init_head(self.model, float(std))
        self.metanet = DynamicLossNet(ctx.num_classes, int(cfg.h_dim), int(cfg.rank_num), bool(cfg.use_lc),
                                      bool(cfg.use_mg), bool(cfg.lc_classwise), float(cfg.lc_bias),
                                      float(cfg.mg_bias)).to(dev)
        self.meta_optimizer = torch.optim.Adam(self.metanet.parameters(), lr=float(cfg.meta_lr),
                                               weight_decay=float(cfg.meta_weight_decay))
        w = cfg.get("warm_epochs")
        self.warm_epochs = int(ctx.recipe.warmup_epochs if w is None else w)
        n = len(ctx.train)
        self.n_train = n
        self.pool = self._pool()  # training samples (observed labels) [+ the clean meta set]
        self.rank = torch.zeros(n, dtype=torch.int64, device=dev)
        self.train_positions = torch.arange(n, device=dev)  # this epoch's training samples (see train_subset)
        self.meta_positions = torch.empty(0, dtype=torch.int64, device=dev)  # positions in self.pool
        self.in_meta = torch.zeros(n, dtype=torch.bool, device=dev)
        self.corrected = torch.full((n,), -1, dtype=torch.int64, device=dev)  # argmax of this epoch's targets
        self.meta_sampler = MetaSampler(self.pool, subset=self.meta_positions)
        self.iteration = 0  # global iteration (the LC warm-up runs while it is below lc_warmup_iters)
        self._overlap = torch.zeros((), dtype=torch.int64, device=dev)
        self._meta_loss = torch.zeros((), device=dev)
        self._lc_loss = torch.zeros((), device=dev)
        self._meta_steps = self._lc_steps = 0
        self._fm = FunctionalModel(self.model)
        options = meta_compile_options(ctx.cfg.train)  # train.compile_meta: the compiled pure meta step
        self._compiled_meta = None if options is None else MetaStep(self._fm, self.metanet,
                                                                MetaProblem(dynamic_virtual_loss), options)

    def _pool(self) -> ImageSource:
        """The training set, followed by the clean meta set when ``union_clean_meta`` (positions n..)."""
        train = self.ctx.train
        return train.concat(self.ctx.meta.samples()) if bool(self.cfg.union_clean_meta) else train

    def is_warm(self, epoch: int) -> bool:
        return epoch < self.warm_epochs

    def train_subset(self, phase: Phase) -> torch.Tensor:
        return self.train_positions  # chosen in on_epoch_start; the engine reads it every epoch

    # -- per-epoch work -------------------------------------------------------------------------
    def epoch_losses(self) -> torch.Tensor:
        """CE of every training sample's weak view against its observed label, model in eval mode."""
        out = torch.empty(self.n_train, device=self.ctx.device)
        with evaluating(self.model) as model:
            for b in self.ctx.train.eval_batches(int(self.ctx.cfg.train.eval_batch_size)):
                out[b.index] = F.cross_entropy(model(b.x), b.y, reduction="none")
        return out

    def on_epoch_start(self, phase: Phase, epoch: int) -> None:
        super().on_epoch_start(phase, epoch)
        ctx, cfg = self.ctx, self.cfg
        labels = ctx.train.labels
        loss = self.epoch_losses()
        self.rank = class_ranks(loss, labels, ctx.num_classes, int(cfg.rank_num))
        self.corrected.fill_(-1)
        self._overlap.zero_()
        self._meta_loss.zero_()
        self._lc_loss.zero_()
        self._meta_steps = self._lc_steps = 0
        if self.is_warm(epoch):
            self.in_meta.zero_()
            self.meta_positions = torch.empty(0, dtype=torch.int64, device=ctx.device)
            self.train_positions = torch.arange(self.n_train, device=ctx.device)
            return
        n_min = int(np.min(ctx.class_counts))
        m1, m2 = hs_sizes(n_min, float(cfg.first_select_ratio), float(cfg.second_select_ratio))
        if m2 < 1:
            raise ConfigError(f"hierarchical sampling keeps int({cfg.first_select_ratio} * {n_min} * "
                              f"{cfg.second_select_ratio}) = 0 samples per class (smallest observed class: {n_min}); "
                              "raise method.first_select_ratio / second_select_ratio or use a split with larger "
                              "classes")
        chosen = hierarchical_sample(loss, labels, ctx.num_classes, m1, m2, ctx.generator)
        self.in_meta = torch.zeros(self.n_train, dtype=torch.bool, device=ctx.device)
        self.in_meta[chosen] = True
        self.train_positions = torch.nonzero(~self.in_meta).flatten()
        if bool(cfg.union_clean_meta):
            extra = torch.arange(self.n_train, len(self.pool), device=ctx.device)
            chosen = torch.cat([chosen, extra])
        self.meta_positions = chosen
        self.meta_sampler.restrict(chosen)  # a fresh pass over this epoch's pseudo-meta set

    # -- training -------------------------------------------------------------------------------
    def train_step(self, batch: Batch, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        if self.is_warm(epoch):
            return self._warm_step(batch)
        return self._meta_step(batch, phase)

    def _warm_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(self.model(batch.x), batch.y)
        if self.metanet.use_lc and self.iteration < int(self.cfg.lc_warmup_iters):
            with torch.no_grad():  # functional forward: the real BN statistics see the training view only
                weak = self._fm(self.ctx.train.view(batch.index, augment=False), dict(self.model.named_parameters()))
            rank = self.rank[batch.index]
            target = self.metanet.target(rank, batch.y, weak.softmax(1))
            lc_loss = -torch.log(target.gather(1, batch.y.unsqueeze(1)).squeeze(1) + 1e-8).mean()
            self.meta_optimizer.zero_grad(set_to_none=True)
            lc_loss.backward()
            self.meta_optimizer.step()
            self.corrected[batch.index] = target.detach().argmax(1)
            self._lc_loss += lc_loss.detach()
            self._lc_steps += 1
        self.step(self.optimizer, loss)
        self.iteration += 1
        return {"loss": loss.detach()}

    def _meta_step(self, batch: Batch, phase: Phase) -> dict[str, torch.Tensor]:
        gen = self.ctx.generator
        fm = self._fm
        mark = self.ctx.mark_phase  # phase timing (engine/phase_timer.py)
        # the meta batch, the virtual step and the meta forward (one function); compiled, the whole meta step
        mark("meta_loss" if self._compiled_meta is None else FUSED_META)
        weak_x = self.ctx.train.view(batch.index, augment=False)
        rank = self.rank[batch.index]
        meta = self.meta_sampler.next_batch(int(self.cfg.get("meta_batch_size") or phase.batch_size))
        rule, buffers = SGDRule.from_optimizer(self.optimizer), momentum_buffers(self.optimizer, self.model)
        if self._compiled_meta is not None:  # train.compile_meta; the noise comes from the method's stream
            like = next(self.model.parameters())  # the meta pass runs in the parameters' dtype (fp32)
            noise = gumbel_noise((weak_x.shape[0], self.ctx.num_classes), like.dtype, like.device, gen)
            result = self._compiled_meta(weak_x, batch.y, meta.x, meta.y, rule, buffers, (rank, noise))
            meta_loss, (weak_logits,) = result.meta_loss, result.aux
            self.meta_optimizer.zero_grad(set_to_none=True)
            result.set_grads(self.metanet)
        else:
            meta_loss, weak_logits = dynamic_meta_loss(
                fm, fm.params(), self.metanet, weak_x, batch.y, rank, lambda z: gumbel_hard(z, gen), meta.x, meta.y,
                rule, buffers)
            mark("meta_backward")
            self.meta_optimizer.zero_grad(set_to_none=True)
            meta_backward(meta_loss, self.metanet.parameters())
        self.meta_optimizer.step()

        mark("real")
        with torch.no_grad():
            target = self.metanet.target(rank, batch.y, gumbel_hard(weak_logits, gen))  # a new draw
            margin = self.metanet.margin()
        loss = soft_cross_entropy(self.model(batch.x) + margin, target).mean()
        self.step(self.optimizer, loss)
        self.corrected[batch.index] = target.argmax(1)
        self._overlap += self.in_meta[batch.index].sum()
        self._meta_loss += meta_loss.detach()
        self._meta_steps += 1
        self.iteration += 1
        return {"loss": loss.detach()}

    def finetune(self, batch_size: int) -> tuple[float, int]:
        """One pass over the pseudo-meta set: training view, one-hot observed labels, logits + m."""
        total, steps = torch.zeros((), device=self.ctx.device), 0
        with torch.no_grad():
            margin = self.metanet.margin()
        for b in self.pool.batches(batch_size, self.meta_positions, limit=self.ctx.cfg.train.limit_batches):
            loss = F.cross_entropy(self.model(b.x) + margin, b.y)
            self.step(self.optimizer, loss)
            total += loss.detach()
            steps += 1
            self.iteration += 1
        return float(total) / max(1, steps), steps

    def on_epoch_end(self, phase: Phase, epoch: int) -> dict[str, float]:
        if self.is_warm(epoch):
            return {"lc_loss": float(self._lc_loss) / self._lc_steps} if self._lc_steps else {}
        overlap = int(self._overlap)
        if overlap:
            raise RuntimeError(f"dynamic_loss: {overlap} pseudo-meta samples were trained on in epoch {epoch}; the "
                               "engine must read train_subset after on_epoch_start")
        logs = {"meta_loss": float(self._meta_loss) / max(1, self._meta_steps),
                "pseudo_meta_size": float(self.meta_positions.shape[0])}
        if bool(self.cfg.finetune):
            logs["finetune_loss"], _ = self.finetune(int(self.cfg.get("meta_batch_size") or phase.batch_size))
        if self.metanet.use_mg:
            with torch.no_grad():
                m = self.metanet.margin().squeeze(0)
            logs["margin_min"], logs["margin_max"] = float(m.min()), float(m.max())
        return logs

    # -- measurements ---------------------------------------------------------------------------
    def diagnostics(self, phase: Phase, epoch: int, clean: Any) -> dict[str, Any]:
        seen = (self.corrected >= 0) & (clean.labels >= 0)
        right = self.corrected == clean.labels
        out: dict[str, Any] = {}
        for key, mask in (("lc_acc", seen), ("lc_acc_noisy", seen & clean.noisy),
                          ("lc_acc_clean", seen & ~clean.noisy)):
            if bool(mask.any()):
                out[key] = float(right[mask].float().mean())
        if not self.is_warm(epoch):
            hs = self.meta_positions[self.meta_positions < self.n_train]
            hs = hs[clean.labels[hs] >= 0]
            if hs.numel():
                out["hs_clean_rate"] = float((~clean.noisy[hs]).float().mean())
        return out

    def artifacts(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"rank": self.rank.cpu().numpy(), "corrected_label": self.corrected.cpu().numpy()}
        with torch.no_grad():
            if self.metanet.use_lc:
                ranks = torch.arange(self.metanet.rank_num, device=self.ctx.device)
                out["lc_confidence"] = torch.sigmoid(self.metanet.lc(self.metanet.rank_emb[ranks])).cpu().numpy()
            if self.metanet.use_mg:
                out["margin"] = self.metanet.margin().squeeze(0).cpu().numpy()
        return out
