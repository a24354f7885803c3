"""Exact FLOP counts of a training step and of its phases (``torch.utils.flop_counter``).

``FlopCounterMode`` counts matmul/convolution FLOPs (2 per multiply-accumulate), forward and
backward, double backward included; elementwise ops, BatchNorm and the optimiser are not counted.
Counts are deterministic and per image they do not depend on the batch size, which makes them
the CI proxy for the cost of a step (PERFORMANCE.md §9.9).
"""

from __future__ import annotations

from typing import Callable

from torch.utils.flop_counter import FlopCounterMode

Marker = Callable[[str], None]


class PhaseFlops:
    """Run ``fn(mark)`` under a FLOP counter; ``mark(name)`` starts a phase (as ``ctx.mark_phase``).

    FLOPs before the first mark go to ``first``.
    """

    def __init__(self, first: str = "step") -> None:
        self.first = first
        self.phases: dict[str, float] = {}
        self._mode: FlopCounterMode | None = None
        self._current = first
        self._last = 0

    def _close(self) -> None:
        assert self._mode is not None
        total = self._mode.get_total_flops()
        self.phases[self._current] = self.phases.get(self._current, 0.0) + float(total - self._last)
        self._last = total

    def mark(self, name: str) -> None:
        self._close()
        self._current = name

    def run(self, fn: Callable[[Marker], object]) -> dict[str, float]:
        self.phases, self._current, self._last = {}, self.first, 0
        with FlopCounterMode(display=False) as mode:
            self._mode = mode
            fn(self.mark)
            self._close()
        self._mode = None
        return {k: v for k, v in self.phases.items() if v or k != self.first}

    @property
    def total(self) -> float:
        return float(sum(self.phases.values()))


def step_flops(fn: Callable[[Marker], object], first: str = "step") -> dict[str, float]:
    """FLOPs of one call of ``fn(mark)``, per phase (``mark`` names a phase's start)."""
    return PhaseFlops(first).run(fn)


def model_step_flops(model_name: str, *, sls: tuple[int, ...] = (0, 1, 2, 3), batch: int = 2,
                     num_classes: int = 10, device: str = "cpu") -> dict[str, dict[str, float]]:
    """GFLOP per image of the registered CE step (``"plain"``) and of the registered CurveNet meta
    step at each SLMO level (``"SL0"``...), per phase as CurveNet marks them, on a CIFAR-shaped batch
    of synthetic data (the step after a first one, so that momentum buffers exist, as in training)."""
    import tempfile
    from pathlib import Path

    import torch

    from curvebench.methods import load_all_methods
    from curvebench.perf.bench import MethodCase
    from curvebench.perf.synthetic import synthetic_data

    load_all_methods()
    dev = torch.device(device)
    data = synthetic_data(dev, num_classes=num_classes, n_train=4 * batch, n_meta=max(batch, num_classes),
                          n_test=num_classes)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="curvebench-flops-") as tmp:
        cases = {"plain": MethodCase("ce", model_name, data, dev, Path(tmp), batch_size=batch)}
        for sl in sls:
            cases[f"SL{sl}"] = MethodCase("curvenet", model_name, data, dev, Path(tmp), batch_size=batch,
                                          overrides=[f"method.slmo={sl}", f"method.meta_batch_size={batch}"],
                                          label=f"curvenet SL{sl}")
        for key, case in cases.items():
            torch.manual_seed(0)
            case.build()
            case.run_step(lambda name: None)  # momentum buffers exist from here on, as in training
            out[key] = {k: v / batch / 1e9 for k, v in step_flops(case.run_step).items()}
    return out
