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
                     num_classes: int = 10, device: str = "meta") -> dict[str, dict[str, float]]:
    """GFLOP per image of the plain CE step (``"plain"``) and of the generic meta step at each SLMO
    level (``"SL0"``...), per phase, for a CIFAR-shaped batch. On the ``meta`` device nothing is
    computed (shapes only), so even WRN-16-8 takes a second."""
    import torch

    from curvebench.models import build_model
    from curvebench.perf.metastep import MetaStep, plain_step, weight_net_and_optimizer

    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.arange(batch, device=dev) % num_classes
    curves = torch.randn(batch, 294, device=dev)
    plain_step(model, opt, x, y)  # momentum buffers exist from here on, as in training
    out = {"plain": {"step": step_flops(lambda mark: plain_step(model, opt, x, y))["step"] / batch / 1e9}}
    for sl in sls:
        wnet, wopt = weight_net_and_optimizer(num_classes, dev)
        step = MetaStep(model, opt, sl, wnet, wopt)
        phases = step_flops(lambda mark: step(x, y, curves, x, y, mark))
        out[f"SL{sl}"] = {k: v / batch / 1e9 for k, v in phases.items()}
    return out
