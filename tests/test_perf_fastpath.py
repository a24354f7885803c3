"""The ``train:`` fast-path flags (engine/fastpath.py): TF32, channels_last, compile / CUDA graphs,
bf16 autocast. Defaults keep the earlier behaviour; each flag does what it says end to end."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from baselines.ce import CrossEntropy
from curvebench.config import compose_config
from curvebench.engine.fastpath import (
    apply_backend_flags,
    eager_fp32,
    is_compiled,
    no_tf32,
    prepare_model,
    train_autocast,
)
from curvebench.engine.virtual import FunctionalModel, SGDRule, meta_backward
from curvebench.errors import ConfigError
from curvebench.perf.bench import MethodCase
from curvebench.perf.synthetic import synthetic_data
from tests.helpers import cli, records

DIGITS = ["method=ce", "seed=1", "recipe.epochs=1", "train.limit_batches=2"]


@pytest.fixture
def restore_backend_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic_data(torch.device("cpu"), n_train=128, n_meta=40, n_test=20)


def test_defaults_keep_the_earlier_behaviour():
    train = compose_config([]).train
    assert train.tf32 is True
    assert (train.channels_last, train.compile, train.cuda_graphs, train.bf16) == (False, False, False, False)
    assert train.compile_backend == "inductor"


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_flag_is_applied_by_every_run(workdirs, restore_backend_flags, monkeypatch, tf32):
    from curvebench.run import build_context
    from curvebench.suites import plan_suite

    (plan,) = plan_suite("digits", [*DIGITS, "split.imbalance_factor=1", "split.noise_rate=0.0", f"train.tf32={tf32}"])
    apply_backend_flags({"tf32": not tf32}, torch.device("cpu"))
    build_context(plan)
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32


class _ConvInputs(TorchDispatchMode):
    """Records the memory format and dtype of the input of every convolution over a batch of
    ``batch`` images (forward passes; autograd's weight-gradient convolutions are left out)."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.seen: list[tuple[bool, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "convolution" and args[0].shape[0] == self.batch and args[0].shape[1] > 1:
            self.seen.append((args[0].is_contiguous(memory_format=torch.channels_last), args[0].dtype))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


@pytest.mark.parametrize("method", ["ce", "curvenet"])  # a plain step and the registered meta step (SL 0)
def test_channels_last_reaches_every_convolution_and_changes_only_rounding(method, tiny_data, tmp_path):
    # In float64: fp32 kernels differ between instruction sets (AVX2, AVX-512, AMX) and three meta
    # steps amplify their rounding to ~1e-4, so an fp32 tolerance would be a guess. In float64 the
    # same amplification stays below 1e-12; a real layout bug (a permuted tensor) is O(1).
    cpu = torch.device("cpu")
    losses = {}
    for cl in (False, True):
        with _default_dtype(torch.float64):
            case = MethodCase(method, "resnet8", tiny_data, cpu, tmp_path / str(cl), batch_size=8,
                              overrides=[f"train.channels_last={cl}"])
            torch.manual_seed(0)
            case.build()
            if method == "curvenet":  # its input, the probe curves, is stored in float32: follow the test's dtype
                case.method._store["curves"] = case.method.curves.double()
            with _ConvInputs(8) as seen:
                losses[cl] = torch.stack([case.run_step(lambda name: None) for _ in range(3)])
        assert seen.seen and all(fmt == cl and dtype == torch.float64 for fmt, dtype in seen.seen), (cl, seen.seen[:3])
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-10, atol=1e-10)


def test_channels_last_end_to_end_run(workdirs):
    assert cli("digits", *DIGITS, "split.imbalance_factor=1", "split.noise_rate=0.0", "train.channels_last=true") == 0
    (rec,) = records(workdirs["results"])
    assert rec["status"] == "done" and rec["config"]["train"]["channels_last"] is True


class Tiny(nn.Module):
    slmo_groups = (("stem",), ("stage1",))

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(self.stage1(self.stem(x)).mean((2, 3)))


def _meta_and_real_grads(model):
    torch.manual_seed(1)
    x, y = torch.randn(6, 3, 6, 6), torch.randint(0, 3, (6,))
    wnet = nn.Linear(1, 1)
    fm = FunctionalModel(model)
    params = fm.params()
    losses = F.cross_entropy(fm(x, params), y, reduction="none")
    w = torch.sigmoid(wnet(losses.detach()[:, None])).squeeze(1)
    new = fm.virtual_step((w * losses).mean(), params, SGDRule(0.3, momentum=0.9, nesterov=True, weight_decay=5e-4))
    meta_backward(F.cross_entropy(fm(x, new), y), wnet.parameters())
    F.cross_entropy(model(x), y).backward()  # the real step goes through the compiled model
    return wnet.weight.grad.clone(), model.linear.weight.grad.clone()


def test_compiled_model_keeps_its_state_dict_and_meta_passes_fall_back_to_eager():
    torch.manual_seed(0)
    plain = Tiny()
    compiled = Tiny()
    compiled.load_state_dict(plain.state_dict())
    prepare_model(compiled, {"compile": True, "compile_backend": "eager"}, torch.device("cpu"))
    assert is_compiled(compiled) and not is_compiled(plain)
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints and model.pt unchanged
    expected, got = _meta_and_real_grads(plain), _meta_and_real_grads(compiled)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b)


def test_cuda_graphs_needs_a_gpu_and_says_so():
    with pytest.raises(ConfigError, match="train.cuda_graphs=true needs a CUDA device"):
        prepare_model(Tiny(), {"cuda_graphs": True}, torch.device("cpu"))


def test_bf16_autocast_covers_the_step_but_not_the_meta_passes():
    cpu = torch.device("cpu")
    assert isinstance(train_autocast({"bf16": False}, cpu), type(train_autocast({}, cpu)))
    model = Tiny()
    x = torch.randn(2, 3, 6, 6)
    with train_autocast({"bf16": True}, cpu):
        assert model(x).dtype == torch.bfloat16
        fm = FunctionalModel(model)
        assert fm(x, fm.params()).dtype == torch.float32
        with eager_fp32(model, "cpu"):
            assert not torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")


def test_bf16_flag_reaches_the_training_loop(workdirs, monkeypatch):
    seen = []
    step_dtypes: list[torch.dtype] = []  # conv / linear outputs computed inside train_step
    original = CrossEntropy.train_step

    def spy(self, batch, phase, epoch):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda m, i, o: step_dtypes.append(o.dtype) if isinstance(m, (nn.Conv2d, nn.Linear)) else None)
        try:
            return original(self, batch, phase, epoch)
        finally:
            handle.remove()

    monkeypatch.setattr(CrossEntropy, "train_step", spy)
    assert cli("digits", *DIGITS, "split.imbalance_factor=1", "split.noise_rate=0.0", "train.bf16=true") == 0
    assert seen and all(seen)
    assert step_dtypes and set(step_dtypes) == {torch.bfloat16}  # autocast ran: the model computed in bf16
    seen.clear()
    step_dtypes.clear()
    assert cli("digits", *DIGITS, "split.imbalance_factor=1", "split.noise_rate=0.0") == 0
    assert seen and not any(seen)
    assert step_dtypes and set(step_dtypes) == {torch.float32}


# -- TF32 off in the meta passes (issue 13) ------------------------------------------------------
def _tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


class _Seen(torch.autograd.Function):
    """Identity that records the TF32 flags in its forward and in its (differentiable) backward."""

    @staticmethod
    def forward(ctx, x, log):
        ctx.log = log
        log.append(("forward", _tf32()))
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        ctx.log.append(("backward", _tf32()))
        return _Seen.apply(g, ctx.log), None


class _SeenTiny(Tiny):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log

    def forward(self, x):
        return self.linear(self.stage1(_Seen.apply(self.stem(x), self.log)).mean((2, 3)))


def test_no_tf32_switches_the_flags_off_and_restores_them(restore_backend_flags):
    for flags in ((True, True), (True, False), (False, True)):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        with no_tf32():
            assert _tf32() == (False, False)
            with no_tf32():  # nested
                assert _tf32() == (False, False)
            assert _tf32() == (False, False)
        assert _tf32() == flags
        with pytest.raises(RuntimeError, match="boom"), no_tf32():
            assert _tf32() == (False, False)
            raise RuntimeError("boom")
        assert _tf32() == flags  # restored after an exception


def test_meta_passes_run_without_tf32_and_restore_it(restore_backend_flags):
    """Every functional forward and backward of a virtual step + meta backward sees TF32 off, while
    the real step keeps ``train.tf32``; an exception inside a meta pass restores the flags."""
    torch.manual_seed(0)
    log: list = []
    model, wnet = _SeenTiny(log), nn.Linear(1, 1)
    x, y = torch.randn(4, 3, 5, 5), torch.tensor([0, 1, 2, 0])
    apply_backend_flags({"tf32": True}, torch.device("cpu"))
    assert _tf32() == (True, True)
    fm = FunctionalModel(model)
    params = fm.params()
    losses = F.cross_entropy(fm(x, params), y, reduction="none")
    w = torch.sigmoid(wnet(losses.detach()[:, None])).squeeze(1)
    new = fm.virtual_step((w * losses).mean(), params, SGDRule(0.1, momentum=0.9))
    meta = F.cross_entropy(fm(x, new), y)
    meta_backward(meta, wnet.parameters())
    kinds = [k for k, _ in log]
    assert kinds.count("forward") >= 2 and kinds.count("backward") >= 3  # 2nd-order pass included
    assert all(flags == (False, False) for _, flags in log), log
    assert wnet.weight.grad is not None and _tf32() == (True, True)
    log.clear()
    model(x).sum().backward()  # the real step: TF32 as configured
    assert log and all(flags == (True, True) for _, flags in log)
    with pytest.raises(RuntimeError):
        fm(torch.randn(2, 7), fm.params())  # fails inside the meta pass
    assert _tf32() == (True, True)


def test_each_methods_meta_pass_runs_without_tf32(restore_backend_flags):
    """MW-Net, CurveNet and Dynamic Loss: their weighting network's forward (outside the functional
    model) is inside the TF32-off region too."""
    from baselines.dynamic_loss import DynamicLossNet, dynamic_meta_loss
    from baselines.mwnet import WeightNet, mwnet_meta_loss
    from curvenet.meta_step import meta_loss, virtual_params

    torch.manual_seed(0)
    seen: list = []

    def spy(module: nn.Module) -> None:
        module.register_forward_pre_hook(lambda *_: seen.append(_tf32()))

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    x, y = torch.randn(4, 3, 5, 5), torch.tensor([0, 1, 2, 0])
    fm = FunctionalModel(Tiny())
    vnet = WeightNet(3)
    spy(vnet)
    mwnet_meta_loss(fm, fm.params(), vnet, x, y, x, y, 0.1, normalize=False, detach_input=True)
    cnet = nn.Linear(2, 1)
    spy(cnet)
    new = virtual_params(fm, lambda: torch.sigmoid(cnet(torch.ones(4, 2))).squeeze(1), x, y, SGDRule(0.1), None)
    meta_loss(fm, new, x, y)
    dnet = DynamicLossNet(3, h_dim=4, rank_num=5)
    spy(dnet.lc)
    spy(dnet.mg)
    dynamic_meta_loss(fm, fm.params(), dnet, x, y, torch.tensor([0, 1, 4, 2]), lambda z: z.softmax(1), x, y,
                      SGDRule(0.1))
    assert len(seen) == 4 and all(flags == (False, False) for flags in seen), seen
    assert _tf32() == (True, True)
