"""Interleaved timing of training steps, with phases, on the CPU or a GPU.

- CPU: ``time.perf_counter``; the caller pins one intra-op thread (a busy 2-core machine can be
  40x slower with two threads).
- CUDA: ``torch.cuda.Event`` marks, recorded in stream order; the device is synchronised only
  before a timed block and after it, never inside (the steps themselves must not sync).
- Every case is warmed up, then the cases run in interleaved rounds (the starting case rotates
  from round to round); a round runs ``steps`` steps of each case. Ratios between cases are the
  median of the per-round ratios, which cancels drift and noisy neighbours (PERFORMANCE.md §9.9).
  ``os.getloadavg()`` is recorded around every round.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

Marker = Callable[[str], None]


class TimedCase(Protocol):
    name: str
    batch_size: int

    def run_step(self, mark: Marker) -> Any:
        """One training step; ``mark(name)`` at the start of each phase (optional)."""


class Clock:
    """Timestamps in stream order: floats on the CPU, recorded CUDA events on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def stamp(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        if self.cuda:
            return float(start.elapsed_time(end)) / 1000.0
        return float(end - start)


def timed_block(case: TimedCase, clock: Clock, steps: int) -> tuple[float, dict[str, float]]:
    """Run ``steps`` steps; return (seconds per step, {phase: seconds per step})."""
    marks: list[tuple[str, Any]] = []

    def mark(name: str) -> None:
        marks.append((name, clock.stamp()))

    clock.sync()
    for _ in range(steps):
        mark("step")  # time before the case's first mark of a step
        case.run_step(mark)
    marks.append(("", clock.stamp()))
    clock.sync()
    phases: dict[str, float] = {}
    for (name, a), (_, b) in zip(marks, marks[1:]):
        phases[name] = phases.get(name, 0.0) + clock.seconds(a, b)
    total = clock.seconds(marks[0][1], marks[-1][1])
    per_phase = {k: v / steps for k, v in phases.items() if k != "step" or v / max(total, 1e-12) > 1e-3}
    return total / steps, per_phase


def _q(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class CaseTiming:
    name: str
    batch_size: int
    seconds: list[float] = field(default_factory=list)  # per round: seconds per step
    phases: list[dict[str, float]] = field(default_factory=list)  # per round

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def iqr(self) -> tuple[float, float]:
        return _q(self.seconds, 0.25), _q(self.seconds, 0.75)

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.median

    def phase_median(self, phase: str) -> float | None:
        values = [p[phase] for p in self.phases if phase in p]
        return statistics.median(values) if values else None

    def phase_names(self) -> list[str]:
        names: list[str] = []
        for p in self.phases:
            names += [n for n in p if n not in names]
        return names


@dataclass
class TimingResult:
    cases: dict[str, CaseTiming]
    loadavg: list[tuple[float, float, float]]  # before the first round, then after every round
    rounds: int
    steps: int
    wall_s: float

    def ratio(self, num: str, den: str, phase_num: str | None = None, phase_den: str | None = None
              ) -> tuple[float, float, float]:
        """Median and IQR over rounds of (num / den) measured in the same round."""
        a, b = self.cases[num], self.cases[den]
        values = []
        for r in range(len(a.seconds)):
            x = a.phases[r].get(phase_num, 0.0) if phase_num else a.seconds[r]
            y = b.phases[r].get(phase_den, 0.0) if phase_den else b.seconds[r]
            if y > 0:
                values.append(x / y)
        if not values:
            return float("nan"), float("nan"), float("nan")
        return statistics.median(values), _q(values, 0.25), _q(values, 0.75)


def interleaved(cases: Sequence[TimedCase], device: torch.device, *, rounds: int, steps: int = 1, warmup: int = 2,
                progress: Callable[[str], None] | None = None) -> TimingResult:
    """Warm every case up, then time them in ``rounds`` interleaved rounds."""
    clock = Clock(device)
    t0 = time.perf_counter()
    for case in cases:
        for _ in range(warmup):
            case.run_step(lambda name: None)
    clock.sync()
    out = {c.name: CaseTiming(c.name, c.batch_size) for c in cases}
    loads = [os.getloadavg()]
    n = len(cases)
    for r in range(rounds):
        order = [cases[(r + i) % n] for i in range(n)]
        for case in order:
            seconds, phases = timed_block(case, clock, steps)
            out[case.name].seconds.append(seconds)
            out[case.name].phases.append(phases)
        loads.append(os.getloadavg())
        if progress:
            progress(f"round {r + 1}/{rounds} done, load {loads[-1][0]:.2f}")
    return TimingResult(out, loads, rounds, steps, time.perf_counter() - t0)
