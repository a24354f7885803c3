"""No host sync inside a training step (ARCHITECTURE.md; PERFORMANCE.md §4). The counter flags, on the CPU,
the ops that would stall the host on a GPU; every registered method's ``train_step`` must have none."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from curvebench.engine.method import METHODS
from curvebench.methods import load_all_methods
from curvebench.perf.bench import MethodCase, Skip
from curvebench.perf.syncs import HostSyncCounter
from curvebench.perf.synthetic import synthetic_data

load_all_methods()


def test_counter_flags_each_kind_of_host_sync():
    x = torch.randn(16)
    cases = {
        "item": lambda: x.sum().item(),
        "float": lambda: float(x.max()),
        "if": lambda: 1 if x.mean() > 0 else 0,
        "mask": lambda: x[x > 0],
        "mask assign": lambda: x.clone().__setitem__(x > 0, torch.zeros(16)[x > 0]),
        "nonzero": lambda: torch.nonzero(x > 0),
        "tolist": lambda: x.tolist(),
        "cpu": lambda: x.cpu(),
        "host->device": lambda: torch.tensor([1.0, 2.0], device=x.device),
    }
    for name, fn in cases.items():
        with HostSyncCounter() as sc:
            fn()
        assert sc.count >= 1, name
        assert "test_perf_syncs.py" in sc.report.summary(), (name, sc.report.summary())


def test_counter_ignores_device_side_code_and_optimizer_step_counters():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opts = [torch.optim.Adam(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)]
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def step():
        loss = F.cross_entropy(model(x), y, reduction="none")
        w = torch.where(loss > loss.mean(), 0.5, 1.0)  # masks as arithmetic, not as indices
        total = (w * loss).mean()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in opts:
            opt.step()  # Adam reads its (host-side) step counter: not a device sync
        return total.detach()

    step()
    with HostSyncCounter() as sc:
        step()
    assert sc.count == 0, sc.report.summary()


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic_data(torch.device("cpu"), n_train=256, n_meta=50, n_test=20)


@pytest.mark.parametrize("method", METHODS.names())
def test_train_step_has_no_host_sync(method, tiny_data, tmp_path):
    """The engine's CE step and every registered method's step (on synthetic data, ResNet-8)."""
    case = MethodCase(method, "resnet8", tiny_data, torch.device("cpu"), tmp_path, batch_size=8)
    try:
        case.build()
    except Skip as err:
        pytest.skip(f"{method} cannot be built on synthetic data: {err}")
    case.run_step(lambda name: None)  # first step: optimiser state, lazy buffers
    with HostSyncCounter() as sc:
        for _ in range(2):
            case.run_step(lambda name: None)
    assert sc.count == 0, (f"{method}.train_step synchronises with the host {sc.count} times in 2 steps "
                           f"(move it to on_epoch_end or keep it on the device): {sc.report.summary(10)}")


def test_the_training_loop_syncs_once_per_epoch_not_per_step(tiny_data, tmp_path):
    from curvebench.engine.loop import Trainer

    case = MethodCase("ce", "resnet8", tiny_data, torch.device("cpu"), tmp_path, batch_size=8)
    case.build()
    counts = []
    for limit in (2, 5):
        trainer = Trainer(case.ctx, case.method, None, generators={}, limit_batches=limit, checkpoint=False)
        with HostSyncCounter() as sc:
            entry = trainer._epoch(case.phase, 0)
        assert entry["steps"] == limit
        counts.append(sc.count)
    assert counts[0] == counts[1] <= 3, counts  # the end-of-epoch NaN check and loss read only
