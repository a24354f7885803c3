"""Wall time of a full run, extrapolated from a few real epochs on synthetic CIFAR-sized data.

For each phase of a method, a few epochs are run with the engine's own pieces (``ImageSet``
batches and augmentation, ``train_step`` under the ``train.bf16`` autocast, the end-of-epoch sync,
``confusion_matrix`` on a 10k test set) starting at a few *sample epochs*: 0 and the recipe's
milestones (where methods change regime: CurveNet stops its meta step at the first milestone,
DRW-style reweighting starts late...). Every epoch of the full run is charged the measured time of
the closest sample epoch at or before it. ``--limit-batches`` measures part of an epoch and scales
by the number of batches. The Table 1 estimate scales the training part by each grid point's
training-set size (exponential imbalance profile) and adds one test evaluation per epoch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tabulate import tabulate

from curvebench.data.imbalance import class_counts
from curvebench.engine.evaluate import confusion_matrix
from curvebench.engine.fastpath import train_autocast
from curvebench.engine.method import METHODS
from curvebench.perf.synthetic import CIFAR_META, CIFAR_TRAIN, SyntheticData, bench_config, synthetic_context
from curvebench.perf.timing import Clock


@dataclass
class PhaseEstimate:
    name: str
    epochs: int
    batch_size: int
    evaluate: bool
    samples: dict[int, float] = field(default_factory=dict)  # sample epoch -> train seconds per full epoch
    eval_s: float = 0.0
    batches_per_epoch: int = 0
    measured_batches: int = 0
    loadavg: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # after each sample

    def epoch_seconds(self, epoch: int) -> float:
        starts = [s for s in sorted(self.samples) if s <= epoch]
        return self.samples[starts[-1] if starts else min(self.samples)]

    @property
    def train_total_s(self) -> float:
        return sum(self.epoch_seconds(e) for e in range(self.epochs))

    @property
    def eval_total_s(self) -> float:
        return self.eval_s * self.epochs if self.evaluate else 0.0


@dataclass
class RunEstimate:
    method: str
    model: str
    device: str
    train_size: int
    phases: list[PhaseEstimate]
    skipped: str = ""

    @property
    def total_s(self) -> float:
        return sum(p.train_total_s + p.eval_total_s for p in self.phases)

    def scaled_total_s(self, train_size: int) -> float:
        """The same run on a training set of ``train_size`` images (train time scales with it)."""
        f = train_size / self.train_size
        return sum(p.train_total_s * f + p.eval_total_s for p in self.phases)


def sample_epochs(phase_epochs: int, milestones: Sequence[int], extra: Sequence[int] = ()) -> list[int]:
    return sorted({0, *(m for m in milestones if 0 < m < phase_epochs), *(e for e in extra if 0 <= e < phase_epochs)})


def estimate_run(method: str, model: str, data: SyntheticData, device: torch.device, workdir: Path, *,
                 epochs: int = 1, limit_batches: int | None = None, extra_samples: Sequence[int] = (),
                 overrides: Sequence[str] = (), warmup_batches: int = 2,
                 log: Callable[[str], None] = print) -> RunEstimate:
    """Measure ``epochs`` epochs from each sample epoch of each phase of ``method``."""
    cfg = bench_config(method, model, device=str(device), overrides=overrides)
    ctx = synthetic_context(cfg, data, device, workdir / f"epochs-{method}")
    m = METHODS.get(method)(ctx, cfg.method)
    m.setup()
    clock = Clock(device)
    autocast = train_autocast(cfg.train, device)
    milestones = [int(x) for x in cfg.recipe.get("milestones", [])]
    out = RunEstimate(method, model, str(device), len(data.train_labels), [])
    for phase in m.phases():
        est = PhaseEstimate(phase.name, phase.epochs, phase.batch_size, phase.evaluate)
        m.on_phase_start(phase)
        subset = m.train_subset(phase)
        n_sub = None if subset is None else int(subset.shape[0])
        est.batches_per_epoch = ctx.train.num_batches(phase.batch_size, n_sub, phase.drop_last)
        warm = True
        for start in sample_epochs(phase.epochs, milestones, extra_samples):
            per_epoch = []
            for epoch in range(start, min(start + epochs, phase.epochs)):
                m.on_epoch_start(phase, epoch)
                subset = m.train_subset(phase)  # as the engine: it may change every epoch
                generator = m.train_generator(phase)
                if warm:  # first kernels, allocator, cuDNN autotuning: not timed
                    for batch in ctx.train.batches(phase.batch_size, subset, drop_last=phase.drop_last,
                                                   limit=warmup_batches, generator=generator):
                        with autocast:
                            m.train_step(batch, phase, epoch)
                    clock.sync()
                    warm = False
                nb = ctx.train.num_batches(phase.batch_size, n_sub, phase.drop_last, limit_batches)
                loss_sum = torch.zeros((), device=device)
                clock.sync()
                t0 = time.perf_counter()
                for batch in ctx.train.batches(phase.batch_size, subset, drop_last=phase.drop_last,
                                               limit=limit_batches, generator=generator):
                    with autocast:
                        out_ = m.train_step(batch, phase, epoch)
                    loss_sum += out_["loss"].detach().float()
                m.on_epoch_end(phase, epoch)
                bool(torch.isfinite(loss_sum))  # the engine's one sync per epoch
                dt = time.perf_counter() - t0
                est.measured_batches = nb
                per_epoch.append(dt * est.batches_per_epoch / max(1, nb))
            est.samples[start] = sum(per_epoch) / len(per_epoch)
            est.loadavg[start] = os.getloadavg()
            log(f"  {method}/{phase.name} epoch {start}: {est.samples[start]:.2f} s/epoch "
                f"({len(per_epoch)} epoch(s) x {nb} of {est.batches_per_epoch} batches), "
                f"load {est.loadavg[start][0]:.2f}")
        if phase.evaluate:
            models = m.eval_models()
            clock.sync()
            t0 = time.perf_counter()
            for net in models.values():
                confusion_matrix(net, ctx.test, int(cfg.train.eval_batch_size))
            est.eval_s = time.perf_counter() - t0
        out.phases.append(est)
    return out


def table1_sizes(imbalance_factors: Sequence[float] = (1, 10, 20, 50, 100, 200), n_max: int = 4900,
                 num_classes: int = 10) -> dict[float, int]:
    """Training-set size at each imbalance factor of the CIFAR-10 grid (meta set removed first)."""
    return {f: sum(class_counts("exp", n_max, num_classes, f, 0.5)) for f in imbalance_factors}


def table1_hours(est: RunEstimate, *, noise_levels: int = 3, seeds: int = 3,
                 sizes: dict[float, int] | None = None) -> float:
    """Serial hours for ``est.method``'s share of the Table 1 grid (IF x noise x seeds)."""
    sizes = sizes or table1_sizes()
    return sum(est.scaled_total_s(n) for n in sizes.values()) * noise_levels * seeds / 3600.0


def format_estimates(estimates: Sequence[RunEstimate], seeds: int = 3) -> str:
    rows = []
    total_t1 = 0.0
    for est in estimates:
        if est.skipped:
            rows.append([est.method, "skipped: " + est.skipped, "", "", "", "", "", ""])
            continue
        for p in est.phases:
            samples = ", ".join(f"e{e}: {s:.1f}" for e, s in sorted(p.samples.items()))
            rows.append([est.method, p.name, p.epochs, p.batch_size, samples, f"{p.eval_s:.2f}" if p.evaluate else "-",
                         f"{(p.train_total_s + p.eval_total_s) / 3600:.2f}", ""])
        t1 = table1_hours(est, seeds=seeds)
        total_t1 += t1
        rows.append([est.method, "= full run", "", "", "", "", f"{est.total_s / 3600:.2f}", f"{t1:.1f}"])
    headers = ["method", "phase", "epochs", "batch", "train s/epoch at sample epochs", "eval s", "hours",
               f"Table 1 hours (54 runs: 6 IF x 3 noise x {seeds} seeds)"]
    text = tabulate(rows, headers=headers, disable_numparse=True)
    sizes = table1_sizes()
    text += (f"\nTable 1 training-set sizes per IF: {sizes} (train time scales with size; eval does not).\n"
             f"Sum over the methods above: {total_t1:.1f} device-hours run one after another "
             "(divide by the concurrency speed-up measured with --concurrent).")
    return text


__all__ = ["CIFAR_META", "CIFAR_TRAIN", "RunEstimate", "estimate_run", "format_estimates", "table1_hours",
           "table1_sizes"]
