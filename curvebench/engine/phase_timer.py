"""Per-phase timing of the meta step on a sample of steps (Table 8).

Only every ``every``-th step (after ``skip`` warm-up steps) is timed. On a timed step the device is
synchronised at each phase boundary, so the phases do not blur into each other; the other steps
run without any host synchronisation. ``every = 0`` turns timing off. The samples (milliseconds)
live in a plain dict of lists that the method checkpoints (``extra_state``).
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

PHASES = ("virtual", "meta_forward", "meta_backward", "real")
FUSED_META = "meta_step"  # train.compile_meta: the first three phases as one compiled call


class PhaseTimer:
    def __init__(self, device: torch.device, samples: dict[str, list[float]], every: int = 20, skip: int = 10) -> None:
        self.device = device
        self.samples = samples
        self.every, self.skip = int(every), int(skip)
        self._t: float | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def begin(self, step: int) -> bool:
        """Start timing step ``step`` if it is sampled; returns whether it is."""
        self._t = None
        if self.every <= 0 or step < self.skip or (step - self.skip) % self.every:
            return False
        self._sync()
        self._t = time.perf_counter()
        return True

    def lap(self, phase: str) -> None:
        """End ``phase`` (and start the next one) on a sampled step; a no-op otherwise."""
        if self._t is None:
            return
        self._sync()
        now = time.perf_counter()
        self.samples.setdefault(phase, []).append(1000.0 * (now - self._t))
        self._t = now

    def medians(self, phases: Sequence[str] = (*PHASES, FUSED_META)) -> dict[str, float]:
        """``time_<phase>_ms`` medians over all samples so far, and ``time_meta_ms`` (the meta
        part: virtual + meta forward + meta backward, medians summed; or the fused meta step's median)."""
        out = {f"time_{p}_ms": statistics.median(self.samples[p]) for p in phases if self.samples.get(p)}
        meta = [out.get(f"time_{p}_ms") for p in PHASES[:3]]
        if all(v is not None for v in meta):
            out["time_meta_ms"] = float(sum(meta))  # type: ignore[arg-type]
        elif f"time_{FUSED_META}_ms" in out:
            out["time_meta_ms"] = out[f"time_{FUSED_META}_ms"]
        first = PHASES[0] if self.samples.get(PHASES[0]) else FUSED_META
        if self.samples.get(first):
            out["time_samples"] = float(len(self.samples[first]))
        return out
