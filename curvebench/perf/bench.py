"""Step benchmarks: every registered method's real ``train_step`` (a method whose config declares
``slmo``, CurveNet, at every SLMO level), its phases as the method marks them (``ctx.mark_phase``),
and MW-Net's step done functionally vs reference-style (deep copy).

Each benchmark case is built on a synthetic ``TrainContext`` (``synthetic.py``); a case that cannot
be built on synthetic data is skipped with its reason. For each case we record FLOPs per image
(per phase), host syncs per step, and interleaved timings (``timing.py``).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from curvebench.engine.context import TrainContext
from curvebench.engine.data import Batch
from curvebench.engine.fastpath import train_autocast
from curvebench.engine.method import METHODS, Method
from curvebench.engine.phase_timer import CallbackMarker, NoPhaseMarker
from curvebench.perf.flops import step_flops
from curvebench.perf.reference import FunctionalMWNetStep, ReferenceMWNetStep, VNet
from curvebench.perf.syncs import HostSyncCounter
from curvebench.perf.synthetic import SyntheticData, bench_config, synthetic_context
from curvebench.perf.timing import Marker, TimingResult, interleaved

SLMO_KEY = "slmo"  # a method's SLMO level (CurveNet's SL), when its config declares one
POOL = 4  # distinct batches cycled through by each case


def _noop(name: str) -> None:
    pass


class Skip(Exception):
    """A case that cannot run on synthetic data; the message is the reason."""


@dataclass
class CaseResult:
    name: str
    group: str  # "method" | "mwnet"
    batch_size: int = 0
    kind: str = ""
    flops: dict[str, float] = field(default_factory=dict)  # per phase, whole batch
    syncs: int = 0
    sync_sites: str = ""
    ops: int = 0  # ATen ops dispatched per step
    skipped: str = ""  # reason, when skipped
    first_step_s: float = 0.0  # the first step's wall time (a compiled case: compile time included)

    @property
    def gflop_per_image(self) -> float:
        return sum(self.flops.values()) / self.batch_size / 1e9 if self.batch_size else float("nan")

    def phase_gflop(self, phase: str) -> float:
        return self.flops.get(phase, 0.0) / self.batch_size / 1e9


class Case:
    """A benchmark case: ``build()`` may raise ``Skip``; ``run_step(mark)`` is one training step."""

    name: str
    group: str
    batch_size: int
    kind: str = ""

    def build(self) -> None:
        raise NotImplementedError

    def run_step(self, mark: Marker) -> Any:
        raise NotImplementedError


class _BatchPool:
    def __init__(self, ctx: TrainContext, batch_size: int, subset: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.batches: list[Batch] = []
        n = len(ctx.train) if subset is None else int(subset.shape[0])
        if n < batch_size:
            raise Skip(f"only {n} training samples for batch size {batch_size}")
        while len(self.batches) < POOL:  # whole batches of shuffled epochs, as the engine makes them
            self.batches += list(ctx.train.batches(batch_size, subset, drop_last=True, limit=POOL - len(self.batches),
                                                   generator=generator))
        self.i = 0

    def next(self) -> Batch:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


class MethodCase(Case):
    """A registered method's real ``train_step`` in the final phase (or ``phase_name``)."""

    group = "method"

    def __init__(self, method: str, model: str, data: SyntheticData, device: torch.device, workdir: Path, *,
                 batch_size: int | None, at_epoch: int = 0, overrides: Sequence[str] = (), label: str | None = None,
                 phase_name: str | None = None) -> None:
        self.method_name, self.model_name, self.data, self.device = method, model, data, device
        self.workdir, self.requested_batch, self.at_epoch = workdir, batch_size, at_epoch
        self.overrides, self.phase_name = list(overrides), phase_name
        self.name = label or method
        self.batch_size = batch_size or 0
        self.loss_sum: torch.Tensor | None = None

    def build(self) -> None:
        try:
            cfg = bench_config(self.method_name, self.model_name, batch_size=self.requested_batch,
                               device=str(self.device), overrides=self.overrides)
            cls = METHODS.get(self.method_name)
            self.kind = "meta" if (cls.needs_meta or cls.uses_clean_meta) else "plain"
            ctx = synthetic_context(cfg, self.data, self.device, self.workdir / self.name.replace(" ", "_"))
            self.ctx = ctx
            method: Method = cls(ctx, cfg.method)
            method.setup()
            phases = method.phases()
            if self.phase_name:
                matches = [p for p in phases if p.name == self.phase_name]
                if not matches:
                    raise Skip(f"no phase {self.phase_name!r} (phases: {', '.join(p.name for p in phases)})")
                phase = matches[0]
            else:
                phase = next((p for p in phases if p.final), phases[-1])
            if self.at_epoch >= phase.epochs:
                raise Skip(f"phase {phase.name!r} has {phase.epochs} epochs; --at-epoch {self.at_epoch} is past it")
            method.on_phase_start(phase)
            method.on_epoch_start(phase, self.at_epoch)
            subset = method.train_subset(phase)  # as the engine: read after on_epoch_start
            self.method, self.phase = method, phase
            self.batch_size = phase.batch_size
            self.pool = _BatchPool(ctx, phase.batch_size, subset, method.train_generator(phase))
            self.autocast = train_autocast(cfg.train, self.device)
            self.loss_sum = torch.zeros((), device=self.device)
        except Skip:
            raise
        except Exception as err:  # a method that cannot run on synthetic data: say why, go on
            where = traceback.extract_tb(err.__traceback__)[-1]
            raise Skip(f"{type(err).__name__}: {err} ({Path(where.filename).name}:{where.lineno})") from err

    def run_step(self, mark: Marker) -> Any:
        self.ctx.phase_marker = CallbackMarker(mark)  # the method's phase marks: timer stamps, FLOP counter
        try:
            with self.autocast:
                out = self.method.train_step(self.pool.next(), self.phase, self.at_epoch)
            loss = out["loss"]
            self.loss_sum += loss.detach().float()  # as the engine accumulates it
            return loss
        finally:
            self.ctx.phase_marker = NoPhaseMarker()


class MWNetCase(Case):
    group = "mwnet"
    kind = "meta"

    def __init__(self, reference: bool, model: str, data: SyntheticData, device: torch.device, workdir: Path, *,
                 batch_size: int | None, at_epoch: int = 0, overrides: Sequence[str] = ()) -> None:
        self.reference, self.model_name, self.data, self.device, self.workdir = reference, model, data, device, workdir
        self.requested_batch, self.at_epoch, self.overrides = batch_size, at_epoch, list(overrides)
        self.name = "mwnet reference (deepcopy)" if reference else "mwnet functional (ours)"
        self.batch_size = batch_size or 0

    def build(self) -> None:
        cfg = bench_config("ce", self.model_name, batch_size=self.requested_batch, device=str(self.device),
                           overrides=self.overrides)
        sub = "mwnet-ref" if self.reference else "mwnet"
        ctx = synthetic_context(cfg, self.data, self.device, self.workdir / sub)
        self.ctx, self.batch_size = ctx, int(cfg.recipe.batch_size)
        torch.manual_seed(0)
        model = ctx.build_model()
        opt = ctx.build_optimizer(model.parameters(), nesterov=False)  # MW-Net.py: plain momentum
        ctx.set_lr(opt, ctx.recipe_lr(self.at_epoch))
        vnet = VNet().to(self.device)
        vopt = torch.optim.Adam(vnet.parameters(), lr=1e-3, weight_decay=1e-4)
        self.step = (ReferenceMWNetStep if self.reference else FunctionalMWNetStep)(model, opt, vnet, vopt)
        self.pool = _BatchPool(ctx, self.batch_size)

    def run_step(self, mark: Marker) -> Any:
        mark("meta_batch")
        assert self.ctx.meta is not None
        meta = self.ctx.meta.next_batch(self.batch_size)
        b = self.pool.next()
        return self.step(b.x, b.y, meta.x, meta.y, mark)


# ------------------------------------------------------------------------------------------------
def slmo_key(method: str) -> str | None:
    """``method.slmo`` when the registered method's config declares it, else None."""
    from curvebench.config import compose_config

    return f"method.{SLMO_KEY}" if SLMO_KEY in compose_config([f"method={method}"]).method else None


def method_cases(methods: Sequence[str], model: str, data: SyntheticData, device: torch.device, workdir: Path, *,
                 batch_size: int | None, at_epoch: int, overrides: Sequence[str], sls: Sequence[int],
                 suffix: str = "") -> list[Case]:
    """One case per method; a method whose config declares ``slmo`` (CurveNet) gets one case per
    level in ``sls`` (``"curvenet SL0"``...)."""
    cases: list[Case] = []
    for m in methods:
        key = slmo_key(m)
        if key:
            for sl in sls:
                cases.append(MethodCase(m, model, data, device, workdir, batch_size=batch_size, at_epoch=at_epoch,
                                        overrides=[*overrides, f"{key}={sl}"], label=f"{m} SL{sl}{suffix}"))
        else:
            cases.append(MethodCase(m, model, data, device, workdir, batch_size=batch_size, at_epoch=at_epoch,
                                    overrides=overrides, label=f"{m}{suffix}"))
    return cases


@dataclass
class ModelReport:
    model: str
    device: str
    batch_size: int
    results: dict[str, CaseResult]
    timing: TimingResult | None
    baseline: str | None  # the plain step the ratios are relative to


def run_cases(cases: Sequence[Case], model: str, device: torch.device, *, rounds: int, steps: int, warmup: int,
              sync_steps: int = 2, log: Callable[[str], None] = print, baseline: str = "ce") -> ModelReport:
    """Build, sync-check, FLOP-count and time ``cases`` (skipping those that cannot run)."""
    results: dict[str, CaseResult] = {}
    live: list[Case] = []
    for case in cases:
        res = CaseResult(case.name, case.group)
        results[case.name] = res
        try:
            case.build()
            res.batch_size, res.kind = case.batch_size, case.kind
            # one warm-up step (optimiser state, lazy buffers; a compiled case compiles here), then the checks
            t0 = time.perf_counter()
            case.run_step(_noop)
            res.first_step_s = time.perf_counter() - t0
            twin = results.get(case.name.removesuffix(COMPILED))
            if case.name.endswith(COMPILED) and twin is not None and not twin.skipped:
                # the counting modes would re-trace the graphs: FLOPs and host syncs are the eager twin's
                res.flops, res.syncs, res.ops, res.sync_sites = twin.flops, twin.syncs, twin.ops, twin.sync_sites
                live.append(case)
                log(f"  built {case.name}: first step (compile) {res.first_step_s:.1f} s")
                continue
            with HostSyncCounter(device) as sc:
                for _ in range(sync_steps):
                    case.run_step(_noop)
            res.syncs = -(-sc.count // sync_steps)
            res.ops = sc.report.ops // sync_steps
            res.sync_sites = sc.report.summary() or "; ".join(
                f"{k} x{v}" for k, v in sc.report.cuda_sites.most_common(3))
            res.flops = step_flops(case.run_step)
            live.append(case)
            log(f"  built {case.name}: {res.gflop_per_image:.3f} GFLOP/img, {res.ops} ATen ops/step, "
                f"{res.syncs} host syncs/step")
        except Skip as err:
            res.skipped = str(err)
            log(f"  skipped {case.name}: {err}")
        except Exception as err:  # noqa: BLE001 - report and go on with the other cases
            where = traceback.extract_tb(err.__traceback__)[-1]
            res.skipped = f"{type(err).__name__}: {err} ({Path(where.filename).name}:{where.lineno})"
            log(f"  skipped {case.name}: {res.skipped}")
    timing = None
    if live and rounds > 0:
        timing = interleaved(live, device, rounds=rounds, steps=steps, warmup=warmup, progress=lambda s: log("  " + s))
    bs = max((c.batch_size for c in live), default=0)
    base = baseline if baseline in results and not results[baseline].skipped else None
    return ModelReport(model, str(device), bs, results, timing, base)


COMPILED = " [compiled]"  # the suffix of a case timed with COMPILED_OVERRIDES
COMPILED_OVERRIDES = ("train.compile=true", "train.compile_meta=true")  # the network and the meta step


def build_cases(model: str, data: SyntheticData, device: torch.device, workdir: Path, *, methods: Sequence[str],
                batch_size: int | None, at_epoch: int, overrides: Sequence[str], sls: Sequence[int],
                reference: bool = True, compiled: bool = False) -> list[Case]:
    """The method cases (eager; with ``compiled`` also each one compiled, named ``<case> [compiled]``,
    interleaved with its eager twin in the same rounds) and MW-Net functional vs reference-style."""
    cases = method_cases(methods, model, data, device, workdir, batch_size=batch_size, at_epoch=at_epoch,
                         overrides=overrides, sls=sls)
    if compiled:
        cases += method_cases(methods, model, data, device, workdir, batch_size=batch_size, at_epoch=at_epoch,
                              overrides=[*overrides, *COMPILED_OVERRIDES], sls=sls, suffix=COMPILED)
    kw: dict[str, Any] = dict(batch_size=batch_size, at_epoch=at_epoch, overrides=overrides)
    if reference:
        cases += [MWNetCase(ref, model, data, device, workdir, **kw) for ref in (False, True)]
    return cases


@contextlib.contextmanager
def scratch_dir() -> Any:
    with tempfile.TemporaryDirectory(prefix="curvebench-perf-") as d:
        yield Path(d)


__all__ = ["Case", "CaseResult", "MWNetCase", "MethodCase", "ModelReport", "Skip",
           "build_cases", "run_cases", "scratch_dir"]
