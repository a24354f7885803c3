"""The compiled pure meta step (``train.compile_meta``, curvebench/engine/meta_step.py) against today's eager
meta step, for every meta method: the same meta-gradients and classifier updates in float64, the same
accuracy curve in float32 up to float reordering, and bit-identical resume with the compiled step.

Every compile goes through inductor (the default ``train.compile_backend``); the inductor cache is a
directory shared by the test session, so a graph compiled by one test is reused by the next.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from curvebench.engine.augment import Normalize
from curvebench.engine.data import ImageSet, MetaSampler
from curvebench.engine.meta_step import meta_compile_options
from curvebench.engine.method import METHODS, Phase
from curvebench.engine.records import config_hash
from curvebench.methods import load_all_methods
from curvenet.method import ALLOCATE
from curvenet.probe import publish_curves
from tests.helpers import assert_same_result, interrupted_run, reference_run
from tests.methodhelpers import labels_from_counts, make_ctx

# (method, extra overrides): every meta method, CurveNet at SLMO 0 and 1 (the stem frozen, BN in eval mode)
META_CASES = [("mwnet_noise", ()), ("mwnet_imb", ()), ("curvenet", ("method.slmo=0",)),
              ("curvenet", ("method.slmo=1",)), ("dynamic_loss", ())]
CASE_IDS = ["mwnet_noise", "mwnet_imb", "curvenet-sl0", "curvenet-sl1", "dynamic_loss"]

# float64: eager autograd and the compiled graph differ only by the order of float64 roundings; over a
# few steps of these tiny networks that stays below 1e-12 relative; 1e-10 leaves room and still catches
# any difference in what is computed (a wrong rule, a missing term or momentum buffer is >= 1e-4)
RTOL64 = 1e-10


@pytest.fixture(scope="session", autouse=True)
def inductor_cache(tmp_path_factory):
    """One inductor cache for the whole session: each graph is compiled once, later tests hit the cache."""
    path = tmp_path_factory.mktemp("inductor")
    patch = pytest.MonkeyPatch()
    patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(path))
    yield path
    patch.undo()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ------------------------------------------------------------------------------------------------
# float64: the compiled meta step equals the eager one, step by step
class TinyCNN(torch.nn.Module):
    """Two conv-BN-ReLU stages and a linear head: the smallest network with SLMO groups (SL 0..2), so
    that each float64 graph compiles in seconds."""

    slmo_groups = (("stem",), ("stage1",), ("linear",))
    classifier = "linear"

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.linear = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.stage1(self.stem(x)).mean((2, 3)))


COUNTS = (8, 8, 8, 8)  # observed class counts of the tiny training set (n_min = 8: 2 pseudo-meta per class)
BATCH = 8
STEPS = 3


def _float64_method(name: str, overrides: tuple[str, ...], compiled: bool, tmp: Path):
    """``name`` on a tiny context (random 8x8 images, a clean meta set of 2 per class), built in float64."""
    load_all_methods()
    labels = labels_from_counts(COUNTS)
    k = len(COUNTS)
    extra = [f"train.compile_meta={str(compiled).lower()}", "recipe.warmup_epochs=0",
             *overrides]
    if name == "curvenet":
        curves = tmp / "curves.npz"
        if not curves.exists():
            rng = np.random.default_rng(0)
            publish_curves(curves, rng.random((len(labels), 8), dtype=np.float32), np.asarray(labels), "0" * 64,
                           {"synthetic": True})
        extra += [f"method.probe.curves_file={curves}", "method.skip_first=1", "method.hidden=8"]
    if name == "dynamic_loss":
        extra += ["method.warm_epochs=0", "method.h_dim=8", "method.rank_num=10"]
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ctx = make_ctx(labels, f"method={name}", *extra, num_classes=k, tmp=tmp)
        gen = torch.Generator().manual_seed(5)
        meta_images = torch.randint(0, 256, (2 * k, 1, 8, 8), dtype=torch.uint8, generator=gen)
        meta = ImageSet(meta_images, torch.arange(k).repeat(2), k, Normalize([0.3], [0.4], ctx.device), 1, False, gen,
                        pad_mode="constant")
        ctx = dataclasses.replace(ctx, meta=MetaSampler(meta))
        ctx.build_model = lambda **kw: TinyCNN(k)  # type: ignore[method-assign]
        method = METHODS.get(name)(ctx, ctx.cfg.method)
        method.setup()
        phase = Phase(ALLOCATE if name == "curvenet" else "train", 10, BATCH, final=True)
        method.on_phase_start(phase)
        method.on_epoch_start(phase, 0)
        if name == "curvenet":
            method._store["curves"] = method._store["curves"].double()
    finally:
        torch.set_default_dtype(default)
    return method, phase


def _meta_net(method) -> torch.nn.Module:
    return {"mwnet_noise": "vnet", "mwnet_imb": "vnet", "curvenet": "curvenet", "dynamic_loss": "metanet"}[
        method.name]


@pytest.mark.parametrize(("name", "overrides"), META_CASES, ids=CASE_IDS)
def test_compiled_meta_step_equals_the_eager_one_in_float64(name, overrides, tmp_path):
    eager, phase = _float64_method(name, overrides, False, tmp_path)
    compiled, _ = _float64_method(name, overrides, True, tmp_path)
    assert eager._compiled_meta is None and compiled._compiled_meta is not None
    eager_net, compiled_net = getattr(eager, _meta_net(eager)), getattr(compiled, _meta_net(compiled))
    assert next(compiled.model.parameters()).dtype == torch.float64
    graphs = counters["stats"]["unique_graphs"]
    worst = 0.0
    for step in range(STEPS):
        index = torch.randperm(len(eager.ctx.train), generator=torch.Generator().manual_seed(step))[:BATCH]
        logs = [m.train_step(m.ctx.train.batch(index, augment=False), phase, 0) for m in (eager, compiled)]
        assert counters["stats"]["unique_graphs"] == graphs + 1  # one graph, compiled at the first step
        for (n, a), b in zip(eager_net.named_parameters(), compiled_net.parameters()):
            assert a.grad is not None and b.grad is not None, n
            assert a.grad.norm() > 0, n  # the meta-gradient reaches every weighting-net parameter
            assert _rel(b.grad, a.grad) < RTOL64, (step, n, _rel(b.grad, a.grad))
            worst = max(worst, _rel(b.grad, a.grad))
        if "meta_loss" in logs[0]:
            assert _rel(logs[1]["meta_loss"], logs[0]["meta_loss"]) < RTOL64
    # after STEPS real steps (each with the updated weighting net), classifier and weighting net agree
    for (n, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        if a.is_floating_point():
            assert _rel(b, a) < RTOL64, (n, _rel(b, a))
        else:
            assert torch.equal(a, b), n
    for (n, a), b in zip(eager_net.state_dict().items(), compiled_net.state_dict().values()):
        assert _rel(b, a) < RTOL64, (n, _rel(b, a))
    updates = [_rel(b, a) for a, b in zip(eager.model.parameters(), compiled.model.parameters())]
    print(f"{name} {' '.join(overrides)}: meta-gradients within {worst:.1e}, classifier within {max(updates):.1e}")


# ------------------------------------------------------------------------------------------------
# the flag: off by default, out of the hash while off, in it when on
def test_compile_meta_is_off_by_default_and_hashed_only_when_on():
    from curvebench.config import compose_config, to_dict
    from curvebench.errors import ConfigError
    from curvebench.suites import plan_run

    config = to_dict(compose_config(["experiment=digits", "method=mwnet_noise"]))
    assert config["train"]["compile_meta"] is False
    assert meta_compile_options(config["train"]) is None
    without_key = {**config, "train": {k: v for k, v in config["train"].items() if k != "compile_meta"}}
    assert config_hash(config) == config_hash(without_key)  # published records keep their hashes
    uncapped = {**config, "split": {**config["split"], "pool_per_class": 0}}
    assert config_hash(uncapped) == config_hash(config)  # the same rule for the split's pool cap
    capped = {**config, "split": {**config["split"], "pool_per_class": 400}}
    assert config_hash(capped) != config_hash(config)
    on = {**config, "train": {**config["train"], "compile_meta": True}}
    assert config_hash(on) != config_hash(config)
    assert meta_compile_options(on["train"]) == {"backend": "inductor", "fullgraph": True, "dynamic": False}
    with pytest.raises(ConfigError, match="train.compile_meta must be true or false"):
        plan_run(["method=mwnet_noise", "train.compile_meta=3"])


def test_a_method_without_meta_step_ignores_compile_meta(tmp_path):
    load_all_methods()
    ctx = make_ctx(labels_from_counts((6, 6)), "method=ce", "train.compile_meta=true", num_classes=2, tmp=tmp_path)
    method = METHODS.get("ce")(ctx, ctx.cfg.method)
    method.setup()
    before = [p.clone() for p in method.model.parameters()]
    method.train_step(ctx.train.batch(torch.arange(4)), Phase("train", 1, 4), 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.model.parameters()))


# ------------------------------------------------------------------------------------------------
# float32 runs through the engine: compile on vs off, and resume with compile on
def _run_overrides(name: str, overrides: tuple[str, ...]) -> list[str]:
    """A short digits run whose batches all have one shape (one compiled graph per case)."""
    out = [f"method={name}", *overrides, "seed=1", "split.imbalance_factor=1", "split.noise_rate=0.4",
           "recipe.epochs=3", "recipe.warmup_epochs=0", "train.limit_batches=2", "train.deterministic=true"]
    if name == "curvenet":
        out += ["method.probe.epochs=2", "method.probe.cyclic_epochs=2", "method.probe.cyclic_half_period=1",
                "method.skip_first=1", "method.meta_batch_size=50", "method.timing_every=0"]
    if name == "mwnet_noise":
        out += ["method.meta_batch_size=50"]  # 100 meta images: two full meta batches per pass
    if name == "dynamic_loss":
        out += ["method.warm_epochs=1", "method.finetune=false"]
    return out


# float32: the compiled graph rounds in another order (fused multiply-adds, reduction trees), so the two
# trajectories separate by float32 rounding per step (~1e-7 relative) and drift apart slowly; over 3 short
# epochs (6 meta steps) that moves a test prediction only where two logits are within ~1e-6 of each other,
# so the curves agree to within 1 point (5 of the 500 digits test images) at every epoch; measured here:
# identical curves for every case, epoch losses identical or within 2e-7 relative
ACCURACY_BOUND = 1.0  # percentage points
LOSS_RTOL = 1e-4  # epoch-mean training loss, relative (float32 rounding ~1e-7 per step, amplified by training)


@pytest.mark.parametrize(("name", "overrides"), META_CASES, ids=CASE_IDS)
def test_compiled_runs_match_eager_and_resume_bit_identically(name, overrides, workdirs, tmp_path, monkeypatch):
    base = _run_overrides(name, overrides)
    eager, _ = reference_run([*base, "train.compile_meta=false"])
    compiled_overrides = [*base, "train.compile_meta=true"]
    graphs = counters["stats"]["unique_graphs"]
    compiled, weights = reference_run(compiled_overrides)
    assert counters["stats"]["unique_graphs"] > graphs  # the meta step ran as a compiled graph
    assert compiled["config"]["train"]["compile_meta"] is True
    assert compiled["config_hash"] != eager["config_hash"]
    a, b = eager["metrics"]["top1_per_epoch"], compiled["metrics"]["top1_per_epoch"]
    assert len(a) == len(b) == 3
    assert max(abs(x - y) for x, y in zip(a, b)) <= ACCURACY_BOUND, (a, b)
    # the training loss of the final phase: float32 rounding per step, a few dozen steps, no more
    la, lb = eager["phases"][-1]["loss_per_epoch"], compiled["phases"][-1]["loss_per_epoch"]
    loss_rel = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
    print(f"{name} {' '.join(overrides)}: top-1 eager {a}, compiled {b}; epoch loss rel. diff {loss_rel:.1e}")
    assert loss_rel < LOSS_RTOL, (la, lb)
    # interrupted after epoch 1 (the first meta epoch of dynamic_loss) and resumed: bit-identical
    plan = interrupted_run(compiled_overrides, tmp_path / "again", monkeypatch, epochs=2)
    from curvebench.run import run_planned

    assert run_planned(plan) == "done"
    assert_same_result(plan.run_dir, compiled, weights)


def test_compiled_model_and_bf16_autocast_leave_the_meta_step_alone():
    """``train.compile`` (a compiled model) and ``train.bf16`` (autocast around train_step): the compiled meta
    step traces the plain module and runs in the parameters' dtype, as the eager meta passes do."""
    import functools

    from baselines.mwnet import WeightNet, mwnet_virtual_loss
    from curvebench.engine.meta_step import MetaProblem, MetaStep
    from curvebench.engine.virtual import FunctionalModel, SGDRule

    torch.manual_seed(0)
    plain, vnet = TinyCNN(3), WeightNet(5)
    compiled = TinyCNN(3)
    compiled.load_state_dict(plain.state_dict())
    compiled.compile(backend="aot_eager")
    problem = MetaProblem(functools.partial(mwnet_virtual_loss, normalize=False, detach_input=True))
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    options = {"backend": "aot_eager", "fullgraph": True, "dynamic": False}
    reference = MetaStep(FunctionalModel(plain), vnet, problem, None)(x, y, x, y, SGDRule(0.1))
    step = MetaStep(FunctionalModel(compiled), vnet, problem, options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = step(x, y, x, y, SGDRule(0.1))
    assert result.meta_loss.dtype == torch.float32
    for name, g in reference.grads.items():
        assert result.grads[name].dtype == torch.float32
        assert _rel(result.grads[name], g) < 1e-6, name
