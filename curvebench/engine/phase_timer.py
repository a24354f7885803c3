"""Phase marks of a training step: one mechanism for every run (Table 8, ``curvebench perf``).

A method calls ``ctx.mark_phase(name)`` at the start of each phase of its step (CurveNet:
``virtual``, ``meta_forward``, ``meta_backward``, ``real``; MW-Net and Dynamic Loss, whose virtual
step and meta forward are one function: ``meta_loss``, ``meta_backward``, ``real``). The engine
installs the ``PhaseMarker`` behind it on the ``TrainContext`` of every run and calls
``end_step()`` after every ``train_step``:

- in training, ``PhaseTimer``, the Table 8 timer: only every ``every``-th step that marks a phase
  (after ``skip`` warm-up ones) is timed, with the method's ``timing_every`` / ``timing_skip``
  (CurveNet: 20, 10); a method without them is not timed in training (its records stay
  deterministic: wall-clock times would differ between a run and its resume); on a timed step the device is synchronised at each phase
  boundary, so the phases do not blur into each other; the other steps run without any host
  synchronisation. ``every = 0`` turns timing off. Its samples (milliseconds) are checkpointed by
  the engine, and their medians join the method's diagnostics as ``time_<phase>_ms``;
- under ``curvebench perf``, ``CallbackMarker`` around the benchmark's stamp (CUDA events in stream
  order on a GPU, ``perf_counter`` on the CPU; ``perf/timing.py``) or FLOP counter (``perf/flops.py``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping, Protocol

import torch

PHASES = ("virtual", "meta_forward", "meta_backward", "real")  # CurveNet's meta step (Table 8)
FUSED_META = "meta_step"  # train.compile_meta: the meta phases as one compiled call
REAL = "real"  # the classifier's own step; every other marked phase is part of the meta step
DEFAULT_EVERY, DEFAULT_SKIP = 20, 10


class PhaseMarker(Protocol):
    def __call__(self, phase: str) -> None:
        """``phase`` of the current training step starts (and the previous one, if any, ends)."""

    def end_step(self) -> None:
        """The current training step has ended (called by the engine after every ``train_step``)."""


class NoPhaseMarker:
    """Marks nothing (a context used outside the training loop and ``curvebench perf``)."""

    def __call__(self, phase: str) -> None:
        pass

    def end_step(self) -> None:
        pass


class CallbackMarker:
    """``mark(phase)`` for each phase start; the end of a step is the next step's first mark."""

    def __init__(self, mark: Callable[[str], None]) -> None:
        self.mark = mark

    def __call__(self, phase: str) -> None:
        self.mark(phase)

    def end_step(self) -> None:
        pass


class PhaseTimer:
    """The Table 8 timer: synchronised wall-clock phase times on a sample of the marked steps."""

    def __init__(self, device: torch.device, every: int = DEFAULT_EVERY, skip: int = DEFAULT_SKIP) -> None:
        self.device = device
        self.every, self.skip = int(every), int(skip)
        self.samples: dict[str, list[float]] = {}  # phase -> ms per timed step, phases in marking order
        self.steps = 0  # steps that marked a phase so far (the sampling counter)
        self.timed = 0  # of which timed
        self._in_step = False
        self._phase: str | None = None  # the running phase of a timed step
        self._t = 0.0

    @classmethod
    def for_method(cls, device: torch.device, method_cfg: Mapping[str, Any]) -> "PhaseTimer":
        """With the method's ``timing_every`` / ``timing_skip`` (CurveNet); off when it has none."""
        return cls(device, int(method_cfg.get("timing_every", 0)), int(method_cfg.get("timing_skip", DEFAULT_SKIP)))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _sampled(self, step: int) -> bool:
        return self.every > 0 and step >= self.skip and (step - self.skip) % self.every == 0

    def __call__(self, phase: str) -> None:
        if not self._in_step:  # the step's first mark: is it a timed one?
            self._in_step = True
            step, self.steps = self.steps, self.steps + 1
            if not self._sampled(step):
                return
            self.timed += 1
            self._sync()
        elif self._phase is None:  # an untimed step
            return
        else:
            self._lap()
        self._phase, self._t = phase, time.perf_counter()

    def _lap(self) -> None:
        self._sync()
        assert self._phase is not None
        self.samples.setdefault(self._phase, []).append(1000.0 * (time.perf_counter() - self._t))

    def end_step(self) -> None:
        if self._phase is not None:
            self._lap()
        self._in_step, self._phase = False, None

    def medians(self) -> dict[str, float]:
        """``time_<phase>_ms`` medians over all samples so far (phases in marking order),
        ``time_meta_ms`` (the meta part: every phase but ``real``, medians summed) and
        ``time_samples`` (timed steps); empty before the first timed step."""
        out = {f"time_{p}_ms": statistics.median(v) for p, v in self.samples.items() if v}
        meta = [out[f"time_{p}_ms"] for p in self.samples if p != REAL and self.samples[p]]
        if meta:
            out["time_meta_ms"] = float(sum(meta))
        if self.timed:
            out["time_samples"] = float(self.timed)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"samples": {k: list(v) for k, v in self.samples.items()}, "steps": self.steps, "timed": self.timed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.samples = {k: list(v) for k, v in state["samples"].items()}
        self.steps, self.timed = int(state["steps"]), int(state["timed"])
