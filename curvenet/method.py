"""CurveNet (Jiang et al., "Delving into Sample Loss Curve to Embrace Noisy and Imbalanced Data",
AAAI 2022; official code jiangwenj02/CurveNet-V1): probe-and-allocate, docs/methods.md §2.

Stages (phases):

1. ``probe`` + ``probe_cyclic`` (``recognition_cycle``): CE on the whole biased training set with the
   official schedule (``probe.py``), recording every sample's training loss every epoch, from the
   training-mode forward on its augmented view before the update of its batch. The [n, T] losses are
   cached per split and probe seed (``probe.py``), so a suite probes each split once per seed and
   every CurveNet variant of that seed (SL, P, S, DRW) reuses the curves; when they exist,
   ``phases()`` leaves the probe out.
2. ``allocate`` (``recognition_curve``, the final phase): a fresh classifier with the recipe (the
   harmonised recipe is the official allocating recipe); per batch, while ``epoch < freeze_epoch``:
   ``virtual_step`` -> ``meta_forward`` -> ``meta_update`` -> ``real_step`` (the four timed phases);
   from the first LR decay on, CurveNet is frozen and each sample keeps the last weight it received.

Choices where the paper and the code differ: the code is followed, each behind a flag
(docs/methods.md §15):
- curves: mean subtraction only (``std_normalise: false``; the introduction also divides by the std);
  the first S = 5 epochs *and the last epoch* are dropped (``skip_first``, ``drop_last_epoch``);
- the probe's square-wave LR 0.01/0.001 with 15-epoch halves and batch 16 after 120 epochs at 0.1
  (paper: "cyclical learning rate"); 300 probe epochs (not in the paper);
- CurveNet head has three Linear layers (paper: two) and the class embedding is added twice
  (``double_embedding: true``); output 1 * sigmoid + 0.02, final bias 4.5 (``output_factor``,
  ``output_bias``, ``final_bias_init``);
- the virtual step uses the real optimiser's rule (momentum, Nesterov, weight decay, current lr and
  momentum buffers), as ``higher`` does in the code (paper Eq. 11: a plain gradient step);
- CurveNet freezes at the first LR decay and the *sample weights* freeze with it (each sample keeps
  its last weight), as in the code (``freeze_epoch``, default ``recipe.milestones[0]``);
- the meta loader restarts (reshuffles) at every epoch, as the code's per-epoch ``iter()``
  (``meta_restart_each_epoch``);
- SLMO (``slmo`` = SL) freezes the stem and the first SL-1 stages in the functional copy only, with
  their BatchNorm in eval mode, as the code's ``froze()``;
- DRW starts the epoch *after* the first LR decay (the code's ``epoch > step[0]``; ``drw_start_epoch``)
  and weights the real step only (the virtual step never runs after the freeze anyway).

Deviations from the code (not flags):
- [DECISION] DRW (``curvenet_drw``, Table 6) counts classes with the *observed* labels
  (``ctx.class_counts``); the code counts each sample under its true label (true class sizes), which
  clean training labels would be needed for and which never reach a method here;
- [DECISION] the probe has its own random streams, seeded with the probe seed, for its
  initialisation, batch order and augmentation, so the curves depend on the split, the probe config
  and the probe seed only (not on which run recorded them), and the engine's data stream is untouched
  by the probe: the allocating stage sees the same batches as CE for the same seed, whether this run
  probed or reused the curves. The probe seed is the run's seed by default (``probe.seed: null``), so
  the spread of CurveNet over seeds includes the probe's variance (the code has one seed, 1, for
  everything); the cost is one probe per split *and seed*: 3 probes per split for 3 seeds instead of
  1 (each the official 300 probe epochs; curvenet and curvenet_drw of one seed still share one).
  ``probe.seed: <int>`` trains one probe per split with that seed and shares it among all seeds (as
  before issue 13, with ``probe.seed: 1``);
- [DECISION] the probe trains the run's backbone (``model``): ResNet-32, or WRN-16-8 for Table 6
  (the code has no released WRN config);
- the square wave starts high at the first cyclic epoch (the code toggles at absolute multiples of
  the half period; the same for the official 120/15);
- the code's unused ``alpha_factor``, its Python loops and logging are not reproduced; CurveNet's
  adaptive pool (identity) is left out.

Meta set: the split's clean meta set (``split.meta_per_class`` = k, removed from the training pool
as in the code, so the pool changes with k), optionally cut to ``meta_per_class`` per class
(the first ones; a fixed-pool variant of Table 7). k = 0 (``split.meta_per_class=0`` or
``method.meta_per_class=0``): the ``pseudo_meta_per_class`` (10) training samples of each
*observed* class with the lowest mean probe loss, with their observed labels (Table 7 "0"); this
pseudo-meta sampler (``MetaSampler(ctx.train)`` restricted to them) draws its batches and augmentation from the
engine's data stream.

Diagnostics (per allocating epoch): ``mean_weight_clean`` / ``mean_weight_noisy`` (each sample's
latest weight), ``curvenet_frozen``, ``pseudo_meta_clean_fraction`` (k = 0), ``probe_coverage``, and from
the engine's phase timer (``engine/phase_timer.py``, sampled by ``timing_every`` / ``timing_skip``) the
medians ``time_virtual_ms``, ``time_meta_forward_ms``, ``time_meta_backward_ms`` (with the Adam step,
as the code's "meta time"), ``time_real_ms``, ``time_meta_ms``. Artifacts: ``weights`` [n] (the
weights at the freeze, which no longer change) and ``curves`` [n, T] (the raw probe losses).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from curvebench.engine.data import Batch, MetaSampler
from curvebench.engine.meta_step import MetaProblem, MetaStep, meta_compile_options
from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import (
    MISSING,
    MethodConfig,
    Number,
    check_beta,
    check_int_at_least,
    check_positive,
    require,
)
from curvebench.engine.phase_timer import FUSED_META
from curvebench.engine.reweighting import class_balanced_weights, mean_weight_by_noise
from curvebench.engine.virtual import FunctionalModel, SGDRule, meta_backward, momentum_buffers, slmo_frozen
from curvebench.errors import ConfigError
from curvenet.curves import check_curve_window, curve_dim, lowest_loss_per_class, normalise_curves
from curvenet.meta_step import curvenet_virtual_loss, meta_loss, virtual_params
from curvenet.network import CurveNet
from curvenet.probe import (
    PROBE,
    PROBE_CYCLIC,
    PROBE_PHASES,
    ProbeLock,
    claim_probe,
    curves_path,
    load_curves,
    probe_batch_sizes,
    probe_epochs,
    probe_key,
    probe_lr,
    probe_seed,
    publish_curves,
)

ALLOCATE = "allocate"
MARKER = ".curvenet-probing"  # in the run directory while this run records its own probe


@functools.lru_cache(maxsize=None)
def _num_stages(model_name: str, kwargs_json: str) -> int:
    """Residual stages of a model (SLMO's range), from a storage-less build on the meta device."""
    from curvebench.models import build_model, num_slmo_stages

    kwargs = {k: v for k, v in json.loads(kwargs_json).items() if k != "pretrained"}
    with torch.device("meta"):
        return num_slmo_stages(build_model(model_name, 10, **kwargs))


@dataclass
class ProbeConfig:
    """``method.probe``: the probing stage (curvenet.yaml documents each key)."""

    epochs: int = MISSING
    lr: Number = MISSING
    batch_size: Optional[int] = MISSING  # null: recipe.batch_size
    cyclic_epochs: int = MISSING
    cyclic_lr_high: Number = MISSING
    cyclic_lr_low: Number = MISSING
    cyclic_half_period: int = MISSING
    cyclic_batch_size: Optional[int] = MISSING  # null: batch_size // 8
    momentum: Number = MISSING
    nesterov: bool = MISSING
    weight_decay: Number = MISSING
    seed: Optional[int] = MISSING  # null: the run's seed
    evaluate: bool = MISSING
    curves_file: Optional[str] = MISSING  # a curves .npz to use instead of probing
    wait: bool = MISSING
    stale_after_s: Number = MISSING
    poll_s: Number = MISSING

    def __post_init__(self) -> None:
        for key in ("epochs", "cyclic_epochs"):
            check_int_at_least(getattr(self, key), f"method.probe.{key}", 0)
        require(self.seed is None or self.seed >= 0,
                f"method.probe.seed must be an integer >= 0 or null (the run's seed), got {self.seed!r}")
        check_int_at_least(self.cyclic_half_period, "method.probe.cyclic_half_period", 1)
        check_int_at_least(self.batch_size, "method.probe.batch_size", 1, null="recipe.batch_size")
        check_int_at_least(self.cyclic_batch_size, "method.probe.cyclic_batch_size", 1, null="batch_size // 8")
        for key in ("lr", "cyclic_lr_high", "cyclic_lr_low"):
            check_positive(getattr(self, key), f"method.probe.{key}")
        require(bool(self.curves_file) or self.epochs + self.cyclic_epochs >= 1,
                "the probe has no epoch: set method.probe.epochs and/or method.probe.cyclic_epochs > 0")


@dataclass
class CurveNetConfig(MethodConfig):
    """``curvenet`` and ``curvenet_drw`` (curvenet.yaml documents each key)."""

    probe: ProbeConfig = MISSING
    skip_first: int = MISSING  # S >= 0, leaving at least one loss value of the probe
    drop_last_epoch: bool = MISSING
    std_normalise: bool = MISSING
    hidden: int = MISSING
    output_factor: Number = MISSING
    output_bias: Number = MISSING
    final_bias_init: Number = MISSING
    double_embedding: bool = MISSING
    lr: Number = MISSING
    weight_decay: Number = MISSING
    meta_batch_size: Optional[int] = MISSING  # null: recipe.batch_size
    meta_restart_each_epoch: bool = MISSING
    freeze_epoch: Optional[int] = MISSING  # null: recipe.milestones[0]
    start_weight: Number = MISSING
    slmo: int = MISSING  # 0..the model's residual stages (check_config)
    drw: bool = MISSING
    drw_beta: Number = MISSING
    drw_start_epoch: Optional[int] = MISSING  # null: recipe.milestones[0] + 1 (check_config)
    meta_per_class: Optional[int] = MISSING  # null: the split's whole meta set (check_config); 0: pseudo-meta set
    pseudo_meta_per_class: int = MISSING
    pseudo_meta_score: str = MISSING  # mean | last
    timing_every: int = MISSING
    timing_skip: int = MISSING

    def __post_init__(self) -> None:
        check_int_at_least(self.skip_first, "method.skip_first", 0)
        if not self.probe.curves_file:
            check_curve_window(self.probe.epochs + self.probe.cyclic_epochs, self.skip_first, self.drop_last_epoch)
        check_int_at_least(self.hidden, "method.hidden", 1)
        check_positive(self.lr, "method.lr")
        check_int_at_least(self.freeze_epoch, "method.freeze_epoch", 0, null="recipe.milestones[0]")
        check_int_at_least(self.meta_batch_size, "method.meta_batch_size", 1, null="recipe.batch_size")
        check_int_at_least(self.pseudo_meta_per_class, "method.pseudo_meta_per_class", 1)
        require(self.pseudo_meta_score in ("mean", "last"),
                f"method.pseudo_meta_score must be 'mean' or 'last', got {self.pseudo_meta_score!r}")
        check_int_at_least(self.timing_every, "method.timing_every", 0)
        check_int_at_least(self.slmo, "method.slmo", 0)
        check_int_at_least(self.meta_per_class, "method.meta_per_class", 0, null="the split's whole meta set")
        check_beta(self.drw_beta, "method.drw_beta")
        check_int_at_least(self.drw_start_epoch, "method.drw_start_epoch", 0, null="recipe.milestones[0] + 1")


@register_method("curvenet")
class CurveNetMethod(Method):
    """CurveNet (Jiang et al., AAAI 2022): probe loss curves, then meta-learn a curve -> weight network
    (module docstring: stages, flags for every paper/code difference, decisions)."""

    needs_meta = False  # k = 0 draws a pseudo-meta set from the training data (checked in __init__)
    uses_clean_meta = True
    config_class = CurveNetConfig

    # -- configuration ----------------------------------------------------------------------------
    @classmethod
    def prepare_for_timing(cls, cfg: Any, train_labels: torch.Tensor, cache_dir: Path, split_sha256: str,
                           seed: int) -> None:
        """The allocating stage reads its probe's loss curves; for timing, random curves of the
        configured length stand in for a probe run (the step's cost does not depend on their values)."""
        probe = cfg.method.get("probe")
        if probe is None or "curves_file" not in probe or probe.curves_file:
            return
        from omegaconf import OmegaConf

        rng = np.random.default_rng(seed)
        path = cache_dir / f"synthetic-curves-{cfg.method.name}.npz"
        if not path.exists():
            losses = rng.random((int(train_labels.shape[0]), probe_epochs(probe)), dtype=np.float32)
            publish_curves(path, losses, train_labels.cpu().numpy(), split_sha256, {"synthetic": True})
        OmegaConf.update(cfg, "method.probe.curves_file", str(path))

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        c, r = cfg.method, cfg.recipe
        mcfg = dict(cfg.model)
        name = mcfg.pop("name")
        stages = _num_stages(name, json.dumps(mcfg, sort_keys=True, default=str))
        if c.slmo > stages:
            raise ConfigError(f"method.slmo={c.slmo} is larger than the {stages} residual stages of model {name!r}: "
                              f"choose method.slmo in 0..{stages} (SL=s skips the stem and the first s-1 stages)")
        split_k = int(cfg.split.meta_per_class)
        if c.meta_per_class and split_k == 0:
            raise ConfigError(f"method.meta_per_class={c.meta_per_class} but the split has no meta set "
                              "(split.meta_per_class=0); set split.meta_per_class >= method.meta_per_class")
        if c.meta_per_class and split_k > 0 and c.meta_per_class > split_k:
            raise ConfigError(f"method.meta_per_class={c.meta_per_class} exceeds the split's meta set "
                              f"(split.meta_per_class={split_k})")
        if c.drw and c.drw_start_epoch is None and not list(r.milestones):
            raise ConfigError("DRW starts after the recipe's first milestone, but recipe.milestones is empty; "
                              "set method.drw_start_epoch")

    def __init__(self, ctx: Any, cfg: Any) -> None:
        super().__init__(ctx, cfg)
        k = cfg.meta_per_class
        if ctx.meta is None and k not in (None, 0):
            raise ConfigError(f"method.meta_per_class={k} but the split has no meta set; use split.meta_per_class > 0")
        self.use_pseudo_meta = ctx.meta is None or k == 0

    @property
    def freeze_epoch(self) -> int:
        """First epoch without meta steps: ``freeze_epoch``, else the recipe's first LR decay."""
        if self.cfg.freeze_epoch is not None:
            return int(self.cfg.freeze_epoch)
        r = self.ctx.recipe
        return int(r.milestones[0]) if len(r.milestones) else int(r.epochs)

    @property
    def drw(self) -> bool:
        return bool(self.cfg.drw)

    @property
    def drw_start(self) -> int:
        """First DRW epoch: the code applies beta = 0.9999 for ``epoch > step[0]``."""
        if self.cfg.drw_start_epoch is not None:
            return int(self.cfg.drw_start_epoch)
        return int(self.ctx.recipe.milestones[0]) + 1

    # -- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        ctx, c = self.ctx, self.cfg
        n, k, dev = len(ctx.train), ctx.num_classes, ctx.device
        self._store: dict[str, Any] = {}  # re-derived from the curves file, never checkpointed
        self._phase = ""
        self._lock: ProbeLock | None = None
        self.probe_seed = probe_seed(c.probe, int(ctx.seed))  # the run's seed unless probe.seed is set
        self.model = ctx.build_model()
        self.optimizer = ctx.build_optimizer(self.model.parameters())

        if c.probe.curves_file:
            self.curves_file = Path(str(c.probe.curves_file))
            self.num_epochs = int(self._read_curves().shape[1])
            self.probe_needed = False
        else:
            key = probe_key(ctx.split_sha256, c.probe, int(ctx.recipe.batch_size), ctx.cfg.model, ctx.cfg.dataset,
                            ctx.cfg.train.limit_batches, self.probe_seed)
            self.curves_file = curves_path(ctx.cache_dir, key)
            self._key = key
            self.num_epochs = probe_epochs(c.probe)
            self._lock = ProbeLock(self.curves_file, str(ctx.run_dir), float(c.probe.stale_after_s))
            if self._marker.exists():  # resuming after our own probe started: keep its phases (the checkpoint
                self.probe_needed = True  # names them); reclaim our lock if the curves are still missing
                if not self.curves_file.exists():
                    self._lock.try_acquire()
            else:
                self.probe_needed = claim_probe(self.curves_file, self._lock, bool(c.probe.wait), float(c.probe.poll_s))
        check_curve_window(self.num_epochs, int(c.skip_first), bool(c.drop_last_epoch))
        dim = curve_dim(self.num_epochs, int(c.skip_first), bool(c.drop_last_epoch))

        self.curvenet = CurveNet(dim, k, int(c.hidden), float(c.output_factor), float(c.output_bias),
                                 float(c.final_bias_init), bool(c.double_embedding)).to(dev)
        self.curvenet_optimizer = torch.optim.Adam(self.curvenet.parameters(), lr=float(c.lr),
                                                   weight_decay=float(c.weight_decay))
        self.sample_weights = torch.full((n,), float(c.start_weight), device=dev)
        self.fm = FunctionalModel(self.model, slmo_frozen(self.model, int(c.slmo)))
        options = meta_compile_options(ctx.cfg.train)  # train.compile_meta: the compiled pure meta step
        self._compiled_meta = None if options is None else MetaStep(self.fm, self.curvenet,
                                                                 MetaProblem(curvenet_virtual_loss), options)
        self.class_weights: torch.Tensor | None = None
        self.pseudo_meta_index: torch.Tensor | None = None
        if self.use_pseudo_meta:  # its subset is set once the curves are known
            self.meta_sampler = MetaSampler(ctx.train, subset=torch.zeros(0, dtype=torch.long, device=dev))
        elif c.meta_per_class is None:
            self.meta_sampler = ctx.meta
        else:
            self.meta_sampler = ctx.meta.per_class(int(c.meta_per_class))

        self.probe_model = self.probe_optimizer = None
        self.probe_losses: torch.Tensor | None = None
        self.probe_rng_state: torch.Tensor | None = None
        self._probe_generator: torch.Generator | None = None  # the probe epoch's stream (from probe_rng_state)
        if self.probe_needed:
            p = c.probe
            with torch.random.fork_rng(devices=[]):  # the probe's own seed; the run's RNG is untouched
                torch.default_generator.manual_seed(self.probe_seed)
                self.probe_model = ctx.build_model()
            self.probe_optimizer = ctx.build_optimizer(self.probe_model.parameters(), lr=float(p.lr),
                                                       momentum=float(p.momentum), nesterov=bool(p.nesterov),
                                                       weight_decay=float(p.weight_decay))
            self.probe_losses = torch.full((n, self.num_epochs), float("nan"), device=dev)
            gen = torch.Generator(device=ctx.train.generator.device).manual_seed(self.probe_seed)
            self.probe_rng_state = gen.get_state()

    @property
    def _marker(self) -> Path:
        return Path(self.ctx.run_dir) / MARKER

    def phases(self) -> list[Phase]:
        r, p = self.ctx.recipe, self.cfg.probe
        out = []
        if self.probe_needed:
            bs, cyc = probe_batch_sizes(p, int(r.batch_size))
            if int(p.epochs) > 0:
                out.append(Phase(PROBE, int(p.epochs), bs, evaluate=bool(p.evaluate)))
            if int(p.cyclic_epochs) > 0:
                out.append(Phase(PROBE_CYCLIC, int(p.cyclic_epochs), cyc, evaluate=bool(p.evaluate)))
        out.append(Phase(ALLOCATE, int(r.epochs), int(r.batch_size), final=True))
        return out

    # -- hooks ------------------------------------------------------------------------------------
    def on_phase_start(self, phase: Phase) -> None:
        if phase.name in PROBE_PHASES:
            self._marker.parent.mkdir(parents=True, exist_ok=True)
            self._marker.touch()
        else:
            self._ensure_curves()
            self._drop_probe()

    def on_epoch_start(self, phase: Phase, epoch: int) -> None:
        ctx, c = self.ctx, self.cfg
        self._phase = phase.name
        if phase.name in PROBE_PHASES:
            ctx.set_lr(self.probe_optimizer, probe_lr(c.probe, phase.name, epoch))
            self._probe_generator = torch.Generator(device=ctx.train.generator.device)  # see train_generator
            self._probe_generator.set_state(self.probe_rng_state.cpu())
            if self._lock is not None:
                self._lock.heartbeat(force=True)
            return
        self._ensure_curves()  # after a resume
        if self.probe_model is not None:  # resumed inside the allocating stage of a run that probed
            self._drop_probe()
        if epoch >= 2:  # checkpoint.pt and checkpoint.prev.pt are of the allocating stage: a resume (from
            # either) no longer needs the probe phases
            self._marker.unlink(missing_ok=True)
        ctx.set_lr(self.optimizer, ctx.recipe_lr(epoch))
        if epoch < self.freeze_epoch and c.meta_restart_each_epoch:
            self.meta_sampler.restart()  # the code's per-epoch iter()
        if self.drw:
            beta = float(c.drw_beta) if epoch >= self.drw_start else 0.0
            self.class_weights = torch.as_tensor(class_balanced_weights(ctx.class_counts, beta),
                                                 dtype=torch.float32, device=ctx.device)

    def train_generator(self, phase: Phase) -> torch.Generator | None:
        """The probe's batches and augmentation come from its own stream (seeded with the probe seed,
        carried across epochs in ``probe_rng_state``), so the engine's stream is the same as a run
        that read the curves from a file."""
        return self._probe_generator if phase.name in PROBE_PHASES else None

    def train_step(self, batch: Batch, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        if phase.name in PROBE_PHASES:
            return self.probe_step(batch, phase, epoch)
        if epoch >= self.freeze_epoch:  # CurveNet frozen: each sample keeps its last weight
            return {"loss": self.real_step(batch, self.sample_weights[batch.index])}
        mark = self.ctx.mark_phase  # the Table 8 timer in training (timing_every), CUDA events under perf
        if self._compiled_meta is not None:  # train.compile_meta: the three meta phases are one compiled call
            mark(FUSED_META)
            loss_meta = self.compiled_meta_step(batch)
            mark("real")
            loss = self.real_step(batch)
            return {"loss": loss, "meta_loss": loss_meta}
        mark("virtual")
        params = self.virtual_step(batch)
        mark("meta_forward")
        loss_meta = self.meta_forward(params)
        mark("meta_backward")
        self.meta_update(loss_meta)
        mark("real")
        loss = self.real_step(batch)
        return {"loss": loss, "meta_loss": loss_meta.detach()}

    def on_epoch_end(self, phase: Phase, epoch: int) -> dict[str, float]:
        if phase.name in PROBE_PHASES:
            self.probe_rng_state = self._probe_generator.get_state()
            last = PROBE_CYCLIC if int(self.cfg.probe.cyclic_epochs) > 0 else PROBE
            if phase.name == last and epoch == phase.epochs - 1:
                self._publish()
        return {}

    def eval_models(self) -> dict[str, torch.nn.Module]:
        if self._phase in PROBE_PHASES:
            return {"probe": self.probe_model}
        return {"model": self.model}

    def diagnostics(self, phase: Phase, epoch: int, clean: Any) -> dict[str, Any]:
        if phase.name != ALLOCATE:
            return {}
        out: dict[str, Any] = mean_weight_by_noise(self.sample_weights, clean)
        out["curvenet_frozen"] = float(epoch >= self.freeze_epoch)
        if self.pseudo_meta_index is not None:
            out["pseudo_meta_clean_fraction"] = float((~clean.noisy[self.pseudo_meta_index]).float().mean())
        if "coverage" in self._store:
            out["probe_coverage"] = self._store["coverage"]
        return out

    def artifacts(self) -> dict[str, np.ndarray]:
        self._marker.unlink(missing_ok=True)  # the run is over (artifacts are asked for at its end)
        out = {"weights": self.sample_weights.detach().float().cpu().numpy()}
        if self.curves_file.exists():
            out["curves"] = self._read_curves()
        if self.pseudo_meta_index is not None:
            out["pseudo_meta_index"] = self.pseudo_meta_index.cpu().numpy()
        return out

    # -- the probe --------------------------------------------------------------------------------
    def probe_step(self, batch: Batch, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        t = epoch + (int(self.cfg.probe.epochs) if phase.name == PROBE_CYCLIC else 0)
        ce = F.cross_entropy(self.probe_model(batch.x), batch.y, reduction="none")
        self.probe_losses[batch.index, t] = ce.detach()  # before this batch's update
        loss = ce.mean()
        self.step(self.probe_optimizer, loss)
        if self._lock is not None:
            self._lock.heartbeat()
        return {"loss": loss.detach()}

    def _publish(self) -> None:
        losses = self.probe_losses.cpu().numpy()
        publish_curves(self.curves_file, losses, self.ctx.train.labels.cpu().numpy(), self.ctx.split_sha256, self._key)
        if self._lock is not None:
            self._lock.release()

    def _drop_probe(self) -> None:
        self.probe_model = self.probe_optimizer = None
        self.probe_losses = self.probe_rng_state = self._probe_generator = None
        if self._lock is not None:
            self._lock.release()

    # -- curves -----------------------------------------------------------------------------------
    def _read_curves(self) -> np.ndarray:
        return load_curves(self.curves_file, self.ctx.split_sha256, self.ctx.train.labels.cpu().numpy())

    def _ensure_curves(self) -> None:
        """Normalised curves on the device (re-read from the file after a resume), and the k = 0
        pseudo-meta set."""
        if "curves" in self._store:
            return
        ctx, c = self.ctx, self.cfg
        raw = self._read_curves()
        if raw.shape[1] != self.num_epochs:
            raise ConfigError(f"{self.curves_file} holds {raw.shape[1]} epochs, but CurveNet was built for "
                              f"{self.num_epochs}; delete the file or fix method.probe")
        # on the CPU, once per run: deterministic (index_add_ on CUDA is not) and cheap
        losses, labels = torch.from_numpy(raw), ctx.train.labels.cpu()
        curves = normalise_curves(losses, labels, ctx.num_classes, int(c.skip_first), bool(c.drop_last_epoch),
                                  bool(c.std_normalise))
        self._store["curves"] = curves.to(ctx.device)
        self._store["coverage"] = float(np.mean(~np.isnan(raw)))
        if self.use_pseudo_meta:
            if self.pseudo_meta_index is None:
                self.pseudo_meta_index = lowest_loss_per_class(losses, labels, ctx.num_classes,
                                                               int(c.pseudo_meta_per_class),
                                                               str(c.pseudo_meta_score)).to(ctx.device)
            # set before any meta draw; a resumed run keeps the pass its checkpoint restored
            self.meta_sampler.restrict(self.pseudo_meta_index, restart=False)

    @property
    def curves(self) -> torch.Tensor:
        """Normalised curves [n, D] (Eq. 7-8), the CurveNet input."""
        return self._store["curves"]

    # -- the four phases of a meta step (timed separately for Table 8) ----------------------------
    def virtual_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Phase 1: theta_hat(Theta), one differentiable step of the real optimiser's rule (current lr,
        momentum buffers, Nesterov, weight decay) on the CurveNet-weighted loss of ``batch``."""
        curves = self.curves[batch.index]
        return virtual_params(self.fm, lambda: self.curvenet(curves, batch.y), batch.x, batch.y,
                              SGDRule.from_optimizer(self.optimizer), momentum_buffers(self.optimizer, self.model))

    def meta_forward(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Phase 2: the next meta batch (clean, or pseudo-meta for k = 0) through theta_hat; mean CE."""
        mb = self.meta_sampler.next_batch(int(self.cfg.meta_batch_size or self.ctx.recipe.batch_size))
        return meta_loss(self.fm, params, mb.x, mb.y)

    def meta_update(self, loss_meta: torch.Tensor) -> None:
        """Phase 3: second-order backward into CurveNet only, then its Adam step."""
        self.curvenet_optimizer.zero_grad(set_to_none=True)
        meta_backward(loss_meta, self.curvenet.parameters())
        self.curvenet_optimizer.step()

    def compiled_meta_step(self, batch: Batch) -> torch.Tensor:
        """Phases 1-3 as the engine's compiled pure meta step (``train.compile_meta``): the same virtual
        step, meta batch, meta loss and Adam step; returns the detached meta loss."""
        mb = self.meta_sampler.next_batch(int(self.cfg.meta_batch_size or self.ctx.recipe.batch_size))
        result = self._compiled_meta(batch.x, batch.y, mb.x, mb.y, SGDRule.from_optimizer(self.optimizer),
                                 momentum_buffers(self.optimizer, self.model), (self.curves[batch.index],))
        self.curvenet_optimizer.zero_grad(set_to_none=True)
        result.set_grads(self.curvenet)
        self.curvenet_optimizer.step()
        return result.meta_loss

    def real_step(self, batch: Batch, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Phase 4: the classifier's SGD step on sum_i w_i * CE_i / B (with DRW class weights when on).
        ``weights=None``: recompute them with the updated CurveNet (no grad) and store them per sample."""
        if weights is None:
            with torch.no_grad():
                weights = self.curvenet(self.curves[batch.index], batch.y)
            self.sample_weights[batch.index] = weights.to(self.sample_weights.dtype)  # bf16 under autocast
        ce = F.cross_entropy(self.model(batch.x), batch.y, reduction="none", weight=self.class_weights)
        loss = (weights * ce).sum() / ce.shape[0]
        self.step(self.optimizer, loss)
        return loss.detach()


@register_method("curvenet_drw")
class CurveNetDRW(CurveNetMethod):
    """CurveNet + DRW (Table 6 "Ours+DRW"; the code's ``drw: True``): from the epoch after the first LR
    decay, the real step's CE is weighted per class by class-balanced weights (beta 0.9999, effective
    number, normalised to sum to K) of the *observed* class counts [DECISION; the code uses the true
    class sizes]. Everything else as ``curvenet``."""
