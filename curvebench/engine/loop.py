"""The training loop, written once for every method: phases, epochs, evaluation, checkpoints.

Inside an epoch nothing synchronises with the host: losses and the non-finite flag accumulate on
the device and are read once at the end of the epoch. A non-finite loss stops the run with
``NonFiniteLoss`` naming the phase and epoch; the last good checkpoint stays on disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from curvebench.engine.checkpoint import resume_state, rng_state, save_checkpoint, set_rng_state
from curvebench.engine.context import CleanLabels, TrainContext
from curvebench.engine.evaluate import accuracy, confusion_matrix
from curvebench.engine.fastpath import train_autocast
from curvebench.engine.method import Method, Phase
from curvebench.engine.phase_timer import PhaseTimer
from curvebench.engine.rundir import RunDir


class NonFiniteLoss(RuntimeError):
    def __init__(self, phase: str, epoch: int, value: float) -> None:
        super().__init__(f"non-finite training loss ({value}) in phase {phase!r}, epoch {epoch}; "
                         "lower the learning rate or check the method's hyper-parameters")
        self.phase, self.epoch = phase, epoch


class Interrupted(RuntimeError):
    """Raised after ``interrupt_after`` epochs (tests use it to simulate a killed run)."""


@dataclass
class TrainOutcome:
    history: list[dict[str, Any]]  # one entry per epoch of every phase
    final_phase: str
    confusion_last: np.ndarray  # of the reported model after the last epoch
    confusion_best: np.ndarray  # at the best epoch of the final phase
    extra_last: dict[str, float] = field(default_factory=dict)  # other eval models, last epoch
    wall_time_s: float = 0.0


class Trainer:
    def __init__(self, ctx: TrainContext, method: Method, clean: CleanLabels, *, generators: dict[str, torch.Generator],
                 limit_batches: int | None = None, eval_batch_size: int = 1000, progress: bool = False,
                 checkpoint: bool = True, interrupt_after: int | None = None) -> None:
        self.ctx, self.method, self.clean = ctx, method, clean
        self.generators = generators
        self.limit_batches = limit_batches
        self.eval_batch_size = eval_batch_size
        self.progress = progress
        self.checkpoint = checkpoint
        self.interrupt_after = interrupt_after
        self.ckpt_path = RunDir(ctx.run_dir).checkpoint
        # the Table 8 timer behind ctx.mark_phase: its medians join the diagnostics (time_<phase>_ms)
        self.phase_timer = PhaseTimer.for_method(ctx.device, ctx.cfg.method)
        ctx.phase_marker = self.phase_timer

    # ------------------------------------------------------------------------------------------
    def run(self) -> TrainOutcome:
        method, ctx = self.method, self.ctx
        method.setup()
        phases = method.phases()
        final = next((p for p in phases if p.final), phases[-1])
        history: list[dict[str, Any]] = []
        conf_last = conf_best = None
        start_phase, start_epoch, resumed = 0, 0, False
        # an unreadable or unsafe checkpoint is set aside (one line on stderr): the previous one, else a fresh start
        state = resume_state(self.ckpt_path, ctx.device) if self.checkpoint else None
        if state is not None:
            names = [p.name for p in phases]
            if state["phase"] not in names:
                raise RuntimeError(f"{self.ckpt_path}: checkpoint phase {state['phase']!r} is not one of {names}; "
                                   "delete the checkpoint to restart this run")
            method.load_state_dict(state["method"])
            if ctx.meta is not None and state.get("meta_sampler") is not None:
                ctx.meta.load_state_dict(state["meta_sampler"])
            set_rng_state(state["rng"], self.generators)
            if state.get("phase_timer") is not None:
                self.phase_timer.load_state_dict(state["phase_timer"])
            history, conf_last, conf_best = state["history"], state["conf_last"], state["conf_best"]
            start_phase, start_epoch, resumed = names.index(state["phase"]), state["epoch"] + 1, True

        t0 = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
        done_epochs = 0
        total = sum(p.epochs for p in phases)
        bar = tqdm(total=total, initial=sum(p.epochs for p in phases[:start_phase]) + start_epoch,
                   desc=f"{method.name} epochs", unit="ep", disable=not self.progress, leave=False, position=1)
        for pi in range(start_phase, len(phases)):
            phase = phases[pi]
            first = start_epoch if pi == start_phase else 0
            if not (resumed and pi == start_phase and first > 0):
                method.on_phase_start(phase)
            for epoch in range(first, phase.epochs):
                entry = self._epoch(phase, epoch)
                entry["elapsed_s"] = time.perf_counter() - t0
                if phase.evaluate:
                    conf, extra = self._evaluate()
                    entry["top1"] = accuracy(conf)
                    entry["top1_extra"] = extra
                    if phase is final:
                        best_so_far = max((h["top1"] for h in history if h["phase"] == final.name), default=-1.0)
                        conf_last = conf
                        if entry["top1"] > best_so_far:
                            conf_best = conf
                diag = {**method.diagnostics(phase, epoch, self.clean), **self.phase_timer.medians()}
                if diag:
                    entry["diagnostics"] = diag
                history.append(entry)
                bar.update(1)
                bar.set_postfix(loss=f"{entry['loss']:.3f}", top1=f"{entry.get('top1', float('nan')):.2f}")
                if self.checkpoint:
                    save_checkpoint(self.ckpt_path, {
                        "phase": phase.name, "epoch": epoch, "method": method.state_dict(),
                        "meta_sampler": ctx.meta.state_dict() if ctx.meta is not None else None,
                        "rng": rng_state(self.generators), "phase_timer": self.phase_timer.state_dict(),
                        "history": history,
                        "conf_last": conf_last, "conf_best": conf_best,
                    })
                done_epochs += 1
                if self.interrupt_after is not None and done_epochs >= self.interrupt_after:
                    raise Interrupted(f"stopped after {done_epochs} epochs (phase {phase.name}, epoch {epoch})")
        bar.close()
        if conf_last is None:
            raise RuntimeError(f"the final phase {final.name!r} of {method.name} ran no evaluated epoch")
        last = [h for h in history if h["phase"] == final.name][-1]
        return TrainOutcome(history, final.name, conf_last, conf_best if conf_best is not None else conf_last,
                            last.get("top1_extra", {}), time.perf_counter() - t0)

    # ------------------------------------------------------------------------------------------
    def _epoch(self, phase: Phase, epoch: int) -> dict[str, Any]:
        method, ctx = self.method, self.ctx
        method.on_epoch_start(phase, epoch)
        subset = method.train_subset(phase)  # may change from epoch to epoch (Dynamic Loss)
        generator = method.train_generator(phase)  # None: the engine's data stream
        dev = ctx.device
        loss_sum = torch.zeros((), device=dev)
        bad = torch.zeros((), dtype=torch.bool, device=dev)
        steps = 0
        n_sub = None if subset is None else int(subset.shape[0])
        nb = ctx.train.num_batches(phase.batch_size, n_sub, phase.drop_last, self.limit_batches)
        batches = ctx.train.batches(phase.batch_size, subset, drop_last=phase.drop_last, limit=self.limit_batches,
                                    generator=generator)
        autocast = train_autocast(ctx.cfg.train, dev)
        for batch in tqdm(batches, total=nb, desc=f"{phase.name} {epoch}", unit="it", leave=False,
                          disable=not self.progress, position=2):
            with autocast:  # train.bf16 (a no-op context by default)
                out = method.train_step(batch, phase, epoch)
            self.phase_timer.end_step()
            loss = out["loss"]
            loss_sum += loss
            bad |= ~torch.isfinite(loss)
            steps += 1
        logs = method.on_epoch_end(phase, epoch)
        if bool(bad):  # the one host sync of the epoch
            raise NonFiniteLoss(phase.name, epoch, float(loss_sum))
        entry: dict[str, Any] = {"phase": phase.name, "epoch": epoch, "loss": float(loss_sum) / max(1, steps),
                                 "steps": steps}
        if logs:
            entry["logs"] = logs
        return entry

    def _evaluate(self) -> tuple[np.ndarray, dict[str, float]]:
        models = self.method.eval_models()
        names = list(models)
        conf = confusion_matrix(models[names[0]], self.ctx.test, self.eval_batch_size)
        extra = {n: accuracy(confusion_matrix(models[n], self.ctx.test, self.eval_batch_size)) for n in names[1:]}
        return conf, extra
