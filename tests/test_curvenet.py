"""CurveNet: curves (Eq. 7-8), the network, the meta step (finite differences, SLMO), the freeze, the
k = 0 pseudo-meta set, the probe cache (one probe per split and probe seed, locking), DRW, timing, suites, bad input."""

from __future__ import annotations

import copy
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from curvebench.engine.loop import Trainer
from curvebench.engine.phase_timer import PhaseTimer
from curvebench.engine.reweighting import class_balanced_weights
from curvebench.engine.virtual import FunctionalModel, SGDRule, meta_backward, slmo_frozen
from curvebench.errors import ConfigError
from curvebench.models import build_model
from curvebench.run import build_context, run_planned
from curvebench.suites import expand_grid, load_suite, plan_suite
from curvenet.curves import class_epoch_stats, lowest_loss_per_class, normalise_curves
from curvenet.meta_step import meta_loss, virtual_params
from curvenet.method import CurveNetDRW, CurveNetMethod
from curvenet.network import CurveNet
from curvenet.probe import (
    PROBE,
    PROBE_CYCLIC,
    ProbeLock,
    claim_probe,
    load_curves,
    probe_batch_sizes,
    probe_lr,
    publish_curves,
)
from tests.helpers import assert_same_result, cli, finite_difference_grad, records, reference_run, resumed_run, run_dirs
from tests.test_virtual_step import Tiny  # the tiny BN network of the virtual-step tests

CELL = ["seed=1", "split.imbalance_factor=10", "split.noise_rate=0.4", "train.deterministic=true"]
TINY_PROBE = ["method.probe.epochs=2", "method.probe.cyclic_epochs=2", "method.probe.cyclic_half_period=1",
              "method.probe.cyclic_batch_size=null", "method.skip_first=1"]  # cyclic batch: 64 // 8
TINY_RUN = ["recipe.epochs=4", "recipe.warmup_epochs=0", "method.freeze_epoch=2"]


def _plan(method="curvenet", *overrides):
    (plan,) = plan_suite("digits", [f"method={method}", *CELL, *overrides])
    return plan


def _with_curves(tmp_path, method, *overrides, num_epochs=6, fill=None):
    """A digits context and a method that reads a hand-made curves file (no probe)."""
    path = tmp_path / "curves.npz"
    plan = _plan(method, f"method.probe.curves_file={path}", "method.skip_first=1", *overrides)
    ctx, clean, split, generators, _ = build_context(plan)
    n = len(ctx.train)
    losses = (fill(n, num_epochs) if fill else np.random.default_rng(0).random((n, num_epochs))).astype(np.float32)
    publish_curves(path, losses, ctx.train.labels.cpu().numpy(), ctx.split_sha256, {})
    cls = CurveNetDRW if method == "curvenet_drw" else CurveNetMethod
    return plan, ctx, clean, generators, cls, losses


# -- Eq. 7-8 ------------------------------------------------------------------------------------
def test_curves_subtract_the_per_class_per_epoch_mean_of_observed_labels():
    # 4 samples, observed labels 0, 0, 1, 0; T = 4 epochs
    losses = torch.tensor([[1.0, 2.0, 3.0, 4.0],
                           [3.0, 2.0, 1.0, 0.0],
                           [5.0, 5.0, 5.0, 5.0],
                           [2.0, 5.0, 2.0, 8.0]])
    labels = torch.tensor([0, 0, 1, 0])
    # Eq. 7, class 0 = samples 0, 1, 3: mu_0 = ((1+3+2)/3, (2+2+5)/3, (3+1+2)/3, (4+0+8)/3) = (2, 3, 2, 4);
    # class 1 = sample 2 alone: mu_1 = (5, 5, 5, 5); class 2 has no sample.
    mean, sd = class_epoch_stats(losses, labels, 3)
    torch.testing.assert_close(mean[0], torch.tensor([2.0, 3.0, 2.0, 4.0]))
    torch.testing.assert_close(mean[1], torch.tensor([5.0, 5.0, 5.0, 5.0]))
    # Eq. 8: l - mu_y; S = 1 drops epoch 0 and the last epoch is dropped: epochs 1, 2 remain
    out = normalise_curves(losses, labels, 3, skip_first=1)
    expected = torch.tensor([[2 - 3.0, 3 - 2.0],
                             [2 - 3.0, 1 - 2.0],
                             [0.0, 0.0],
                             [5 - 3.0, 2 - 2.0]])
    torch.testing.assert_close(out, expected)
    # keeping the last epoch (drop_last=False): epochs 1..3; epoch 3 of class 0 is (4, 0, 8) - 4
    out = normalise_curves(losses, labels, 3, skip_first=1, drop_last=False)
    torch.testing.assert_close(out[:, 2], torch.tensor([0.0, -4.0, 0.0, 4.0]))
    # optional std (population): class 0, epoch 1: values (2, 2, 5), mean 3, sd = sqrt((1+1+4)/3) = sqrt(2)
    torch.testing.assert_close(sd[0, 1], torch.tensor(2.0).sqrt())
    out = normalise_curves(losses, labels, 3, skip_first=1, std=True)
    torch.testing.assert_close(out[3, 0], torch.tensor(2.0 / 2.0 ** 0.5), rtol=1e-5, atol=1e-6)


def test_missing_losses_are_ignored_in_the_means_and_become_zero():
    losses = torch.tensor([[1.0, float("nan"), 1.0], [3.0, 4.0, 1.0]])
    out = normalise_curves(losses, torch.tensor([0, 0]), 1, skip_first=0, drop_last=False)
    # epoch 0: mean 2 -> (-1, 1); epoch 1: only sample 1 seen, mean 4 -> (missing -> 0, 0)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


# -- the network --------------------------------------------------------------------------------
def test_curvenet_architecture_init_and_output():
    torch.manual_seed(0)
    net = CurveNet(input_dim=294, num_classes=10, hidden=64)
    shapes = [tuple(m.weight.shape) for m in (net.enc1, net.enc2, net.enc3, net.head1, net.head2, net.head3)]
    assert shapes == [(128, 294), (128, 128), (64, 128), (128, 64), (64, 128), (1, 64)]
    assert tuple(net.embedding.weight.shape) == (10, 64)
    for m in (net.enc1, net.enc2, net.enc3, net.head2):
        assert torch.count_nonzero(m.bias) == 0
    assert torch.count_nonzero(net.head1.bias) > 0  # PyTorch's default bias, as the code
    assert torch.all(net.head3.bias == 4.5)
    w = net(torch.randn(32, 294) * 0.1, torch.randint(0, 10, (32,)))
    assert w.shape == (32,) and torch.all(w > 0.02) and torch.all(w < 1.02)
    assert abs(float(w.detach().mean()) - (torch.sigmoid(torch.tensor(4.5)).item() + 0.02)) < 0.05  # ~1.009 at start
    # the class embedding is added twice (code) or once (flag)
    net.head3.bias.data.zero_()
    c, y = torch.randn(4, 294), torch.tensor([0, 1, 2, 3])
    once = copy.deepcopy(net)
    once.embedding_scale = 1.0
    h_enc = F.relu(net.enc3(F.relu(net.enc2(F.relu(net.enc1(c))))))
    z2 = net.head3(F.relu(net.head2(F.relu(net.head1(h_enc + 2 * net.embedding(y)))))).squeeze(1)
    torch.testing.assert_close(net(c, y), torch.sigmoid(z2) + 0.02)
    assert not torch.allclose(once(c, y), net(c, y))


# -- the meta step ------------------------------------------------------------------------------


@pytest.mark.parametrize("sl", [0, 2])
def test_meta_gradient_reaching_curvenet_matches_finite_differences(sl):
    torch.manual_seed(0)
    model = Tiny().double()
    net = CurveNet(input_dim=4, num_classes=3, hidden=3, final_bias_init=0.0).double()
    x, y = torch.randn(6, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    xm, ym = torch.randn(5, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (5,))
    curves = torch.randn(6, 4, dtype=torch.float64)
    rule = SGDRule(0.3, momentum=0.9, nesterov=True, weight_decay=5e-4)  # the real optimiser's rule
    bufs = {n: torch.randn_like(p) * 0.1 for n, p in model.named_parameters()}
    fm = FunctionalModel(model, slmo_frozen(model, sl))

    def loss_meta():
        new = virtual_params(fm, lambda: net(curves, y), x, y, rule, bufs)
        return meta_loss(fm, new, xm, ym)

    meta_backward(loss_meta(), net.parameters())
    analytic = torch.cat([p.grad.flatten() for p in net.parameters()])
    numeric = finite_difference_grad(loss_meta, list(net.parameters()), eps=1e-6)
    assert analytic.abs().max() > 1e-6
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-9)


def test_slmo_keeps_the_skipped_layers_out_of_the_virtual_step():
    torch.manual_seed(1)
    model = build_model("resnet8", 10)
    frozen = slmo_frozen(model, 2)  # the stem and layer1
    assert frozen == ("conv1", "bn1", "layer1")
    fm = FunctionalModel(model, frozen)
    net = CurveNet(input_dim=5, num_classes=10, hidden=4)
    bn_before = {n: b.clone() for n, b in model.named_buffers()}
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    curves = torch.randn(4, 5)
    new = virtual_params(fm, lambda: net(curves, y), x, y, SGDRule(0.1, 0.9, True, 5e-4), {})
    skipped = [n for n in new if n.startswith(("conv1", "bn1", "layer1."))]
    assert skipped and all(not new[n].requires_grad and new[n].grad_fn is None for n in skipped)
    assert all(new[n].grad_fn is not None for n in new if n not in skipped)
    loss = meta_loss(fm, new, torch.randn(4, 3, 32, 32), y)
    with pytest.raises(RuntimeError):  # no path from the meta loss to the skipped layers
        torch.autograd.grad(loss, [new[skipped[0]]], retain_graph=True)
    meta_backward(loss, net.parameters())
    assert all(p.grad is not None for p in net.parameters())
    assert all(p.grad is None for p in model.parameters())
    for n, b in model.named_buffers():
        assert torch.equal(b, bn_before[n]), n  # the real BN statistics are untouched


def test_slmo_groups_of_wrn16_8_follow_the_code():
    with torch.device("meta"):
        wrn = build_model("wrn16_8", 10)
    # the code's froze() on WRN: conv1 (no BN in WRN's stem), then block1 .. block(SL-1)
    assert [slmo_frozen(wrn, sl) for sl in range(4)] == [(), ("conv1",), ("conv1", "block1"),
                                                         ("conv1", "block1", "block2")]
    with pytest.raises(ConfigError, match="0..3"):
        slmo_frozen(wrn, 4)


def test_meta_step_flops_drop_monotonically_with_sl():
    torch.manual_seed(2)
    model = build_model("resnet32", 10)
    net = CurveNet(input_dim=8, num_classes=10, hidden=8)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    xm, ym = torch.randn(2, 3, 32, 32), torch.tensor([3, 4])
    curves = torch.randn(2, 8)
    flops = []
    for sl in range(4):
        fm = FunctionalModel(model, slmo_frozen(model, sl))
        with FlopCounterMode(display=False) as counter:
            new = virtual_params(fm, lambda: net(curves, y), x, y, SGDRule(0.1, 0.9, True, 5e-4), {})
            meta_backward(meta_loss(fm, new, xm, ym), net.parameters())
        flops.append(counter.get_total_flops())
    assert flops[0] > flops[1] > flops[2] > flops[3], flops


# -- the probe ----------------------------------------------------------------------------------
def test_probe_schedule_is_the_official_one():
    p = {"epochs": 120, "lr": 0.1, "batch_size": None, "cyclic_epochs": 180, "cyclic_lr_high": 0.01,
         "cyclic_lr_low": 0.001, "cyclic_half_period": 15, "cyclic_batch_size": None}
    assert probe_batch_sizes(p, 128) == (128, 16)
    assert {probe_lr(p, PROBE, e) for e in range(120)} == {0.1}
    absolute = {120 + e: probe_lr(p, PROBE_CYCLIC, e) for e in range(180)}
    # 0.01 for epochs 120-134, 0.001 for 135-149, 0.01 for 150-164, ..., 0.001 for 285-299
    assert absolute[120] == absolute[134] == absolute[150] == absolute[270] == 0.01
    assert absolute[135] == absolute[149] == absolute[165] == absolute[299] == 0.001
    assert sum(v == 0.01 for v in absolute.values()) == 90


def test_probe_records_the_loss_before_the_update_and_leaves_the_data_stream_alone(workdirs):
    plan = _plan("curvenet", *TINY_PROBE)
    ctx, clean, split, generators, _ = build_context(plan)
    method = CurveNetMethod(ctx, plan.cfg.method)
    method.setup()
    phases = method.phases()
    assert [(p.name, p.epochs, p.batch_size, p.final) for p in phases] == [
        ("probe", 2, 64, False), ("probe_cyclic", 2, 8, False), ("allocate", 30, 64, True)]
    engine_gen = ctx.train.generator
    state = engine_gen.get_state()
    method.on_phase_start(phases[1])
    probe_state = method.probe_rng_state.clone()
    method.on_epoch_start(phases[1], 1)
    probe_gen = method.train_generator(phases[1])  # the probe's own stream, not the engine's
    assert probe_gen is not None and probe_gen is not engine_gen and probe_gen is not ctx.train.generator
    assert torch.equal(probe_gen.get_state(), probe_state)
    assert method.train_generator(phases[2]) is None  # the allocating stage draws from the data stream
    assert method.probe_optimizer.param_groups[0]["lr"] == 0.001  # second half-period of the wave
    batch = next(ctx.train.batches(8, generator=probe_gen))  # as the engine draws this epoch's batches
    before = copy.deepcopy(method.probe_model)
    expected = F.cross_entropy(before(batch.x), batch.y, reduction="none")
    method.train_step(batch, phases[1], 1)
    torch.testing.assert_close(method.probe_losses[batch.index, 3], expected.detach())  # T index 2 + 1
    assert torch.isnan(method.probe_losses[:, :3]).all()
    assert not torch.equal(before.linear.weight, method.probe_model.linear.weight)
    method.on_epoch_end(phases[1], 1)
    assert ctx.train.generator is engine_gen and torch.equal(engine_gen.get_state(), state)
    assert torch.equal(method.probe_rng_state, probe_gen.get_state())  # carried to the next probe epoch
    assert not torch.equal(method.probe_rng_state, probe_state)
    method._lock.release()


def test_curves_are_reused_one_probe_per_split(workdirs):
    assert cli("digits", "method=curvenet", *CELL, *TINY_PROBE, *TINY_RUN) == 0
    assert cli("digits", "method=curvenet_drw", *CELL, *TINY_PROBE, *TINY_RUN) == 0
    recs = {r["method"]: r for r in records(workdirs["results"])}
    assert [p["name"] for p in recs["curvenet"]["phases"]] == ["probe", "probe_cyclic", "allocate"]
    assert [p["name"] for p in recs["curvenet_drw"]["phases"]] == ["allocate"]  # the probe ran once
    n = recs["curvenet"]["split"]["num_train"]
    steps = [h["steps"] for h in json.loads((run_dirs(workdirs["results"])[0] / "history.json").read_text())]
    assert steps[:4] == [-(-n // 64)] * 2 + [-(-n // 8)] * 2  # batch 64, then 64 // 8
    files = list(workdirs["splits"].rglob("probe-*.npz"))
    assert len(files) == 1 and not list(workdirs["splits"].rglob("*.lock"))
    arts = [np.load(d / "artifacts.npz") for d in run_dirs(workdirs["results"])]
    assert np.array_equal(arts[0]["curves"], arts[1]["curves"]) and arts[0]["curves"].shape == (n, 4)
    assert not np.isnan(arts[0]["curves"]).any()
    for a in arts:
        assert a["weights"].shape == (n,) and {"labels", "clean_labels", "is_noisy"} <= set(a.files)
    for rec in recs.values():
        diag = rec["diagnostics"]["last"]
        assert {"mean_weight_clean", "mean_weight_noisy", "time_virtual_ms", "time_meta_forward_ms",
                "time_meta_backward_ms", "time_real_ms"} <= set(diag)
    assert not list(workdirs["results"].rglob(".curvenet-probing"))


def _seeded_plan(seed, *overrides):
    cell = [f"seed={seed}", *CELL[1:]]
    (plan,) = plan_suite("digits", ["method=curvenet", *cell, *TINY_PROBE, *overrides])
    return plan


def test_the_probe_follows_the_run_seed_unless_fixed(workdirs):
    """probe.seed: null (default) -> the run's seed, in the cache key and the file name, and for the
    probe network's init; an integer -> that seed for every run (one file shared by all seeds)."""
    assert _plan("curvenet").cfg.method.probe.seed is None
    files, inits = {}, {}
    for seed, fixed in ((1, None), (2, None), (1, 7), (2, 7)):
        plan = _seeded_plan(seed, *([] if fixed is None else [f"method.probe.seed={fixed}"]))
        ctx, *_ = build_context(plan)
        method = CurveNetMethod(ctx, plan.cfg.method)
        method.setup()
        assert method.probe_needed and method.probe_seed == (seed if fixed is None else fixed)
        files[seed, fixed] = method.curves_file
        inits[seed, fixed] = method.probe_model.linear.weight.detach().clone()
        method._lock.release()
    assert files[1, None] != files[2, None] and files[1, 7] == files[2, 7]
    assert "-seed1-" in files[1, None].name and "-seed2-" in files[2, None].name and "-seed7-" in files[1, 7].name
    assert len(set(files.values())) == 3 and all(f.parent == files[1, None].parent for f in files.values())
    assert not torch.equal(inits[1, None], inits[2, None]) and torch.equal(inits[1, 7], inits[2, 7])
    with pytest.raises(ConfigError, match="probe.seed must be an integer >= 0 or null"):
        CurveNetMethod.check_config(_plan("curvenet", "method.probe.seed=-1").cfg)


@pytest.mark.slow
def test_two_seeds_train_two_probes_and_a_fixed_seed_shares_one(workdirs):
    for seed in (1, 2):
        assert cli("digits", "method=curvenet", f"seed={seed}", *CELL[1:], *TINY_PROBE, *TINY_RUN) == 0
    files = sorted(workdirs["splits"].rglob("probe-*.npz"))
    assert len(files) == 2 and [("-seed1-" in f.name, "-seed2-" in f.name) for f in files] == [(True, False),
                                                                                              (False, True)]
    a, b = (np.load(f)["losses"] for f in files)
    assert a.shape == b.shape and not np.isnan(a).any() and not np.allclose(a, b)  # different loss curves
    recs = {r["seed"]: r for r in records(workdirs["results"])}
    for rec in recs.values():
        assert [p["name"] for p in rec["phases"]] == ["probe", "probe_cyclic", "allocate"]  # each probed
    arts = {d.name: np.load(d / "artifacts.npz")["curves"] for d in run_dirs(workdirs["results"])}
    assert not np.array_equal(arts["seed-1"], arts["seed-2"])
    # the flag: one probe, of seed 1, shared by both seeds; it is the default's seed-1 probe (same key)
    for seed in (1, 2):
        assert cli("digits", "method=curvenet", f"seed={seed}", *CELL[1:], *TINY_PROBE, *TINY_RUN,
                   "method.probe.seed=1") == 0
    assert sorted(workdirs["splits"].rglob("probe-*.npz")) == files  # no new probe
    recs = [r for r in records(workdirs["results"]) if r["config"]["method"]["probe"]["seed"] == 1]
    assert sorted(r["seed"] for r in recs) == [1, 2]
    assert all([p["name"] for p in r["phases"]] == ["allocate"] for r in recs)  # both reused seed 1's probe
    for d in run_dirs(workdirs["results"]):
        if d.name == "seed-2" and json.loads((d / "result.json").read_text())["config"]["method"]["probe"]["seed"]:
            np.testing.assert_array_equal(np.load(d / "artifacts.npz")["curves"], arts["seed-1"])
    assert not list(workdirs["splits"].rglob("*.lock"))


# -- the probe cache's locking ------------------------------------------------------------------
def test_a_second_run_waits_for_the_probe_of_the_first(tmp_path):
    curves = tmp_path / "probe-x.npz"
    other = ProbeLock(curves, "run-A", stale_after_s=60)
    assert other.try_acquire()
    # held by another live process on this host (our parent stands in for it)
    other.path.write_text(json.dumps({"owner": "run-A", "pid": os.getppid(), "host": socket.gethostname()}))
    mine = ProbeLock(curves, "run-B", stale_after_s=60)
    assert not mine.try_acquire() and not mine.holder_gone()

    def finish():
        time.sleep(0.3)
        publish_curves(curves, np.zeros((2, 3)), np.array([0, 1]), "s" * 64, {})
        other.release()

    threading.Thread(target=finish).start()
    assert claim_probe(curves, mine, wait=True, poll_s=0.05) is False  # waited, then found the curves
    assert not mine.held


def test_stale_and_own_locks(tmp_path):
    curves = tmp_path / "probe-y.npz"
    dead = ProbeLock(curves, "run-A", stale_after_s=5)
    assert dead.try_acquire()
    past = time.time() - 60
    os.utime(dead.path, (past, past))
    mine = ProbeLock(curves, "run-B", stale_after_s=5)
    assert claim_probe(curves, mine, wait=True, poll_s=0.01) is True  # the dead run's lock was removed
    assert json.loads(mine.path.read_text())["owner"] == "run-B"
    again = ProbeLock(curves, "run-B", stale_after_s=5)  # the same run after a restart
    assert again.try_acquire()
    third = ProbeLock(curves, "run-C", stale_after_s=5)
    assert claim_probe(curves, third, wait=False, poll_s=0.01) is True  # no waiting: duplicate work
    # a lock of an earlier run of this same process, or of a dead process, is taken over at once
    assert third.holder_gone()
    mine.path.write_text(json.dumps({"owner": "run-B", "pid": 2 ** 22 + 12345, "host": socket.gethostname()}))
    assert third.holder_gone()
    fourth = ProbeLock(tmp_path / "probe-z.npz", "run-D", stale_after_s=600)
    assert fourth.try_acquire()
    assert claim_probe(tmp_path / "probe-z.npz", ProbeLock(tmp_path / "probe-z.npz", "run-E", 600), True, 0.01)


def test_publishing_is_first_writer_wins(tmp_path):
    path = tmp_path / "c.npz"
    labels = np.array([0, 1])
    assert publish_curves(path, np.ones((2, 3)), labels, "a" * 64, {"k": 1})
    assert not publish_curves(path, np.zeros((2, 3)), labels, "a" * 64, {"k": 1})
    assert np.array_equal(load_curves(path, "a" * 64, labels), np.ones((2, 3)))
    assert not list(tmp_path.glob(".*tmp*"))


# -- allocating stage: freeze, k = 0, DRW ---------------------------------------------------------
class Spy(CurveNetMethod):
    def setup(self):
        super().setup()
        self.snapshots, self.frozen_calls, self.curvenet_calls = [], [], {}
        self.curvenet.register_forward_hook(lambda *a: self.curvenet_calls.__setitem__(
            self._epoch, self.curvenet_calls.get(self._epoch, 0) + 1))

    def on_epoch_start(self, phase, epoch):
        self._epoch = epoch
        super().on_epoch_start(phase, epoch)

    def real_step(self, batch, weights=None):
        if weights is not None:
            self.frozen_calls.append((batch.index.clone(), weights.clone()))
        return super().real_step(batch, weights)

    def on_epoch_end(self, phase, epoch):
        self.snapshots.append(([p.detach().clone() for p in self.curvenet.parameters()],
                               self.sample_weights.clone()))
        return super().on_epoch_end(phase, epoch)


def test_weights_and_curvenet_freeze_at_the_first_decay(workdirs, tmp_path):
    plan, ctx, clean, generators, _, _ = _with_curves(tmp_path, "curvenet", *TINY_RUN)
    method = Spy(ctx, plan.cfg.method)
    assert method.cfg.freeze_epoch == 2
    Trainer(ctx, method, clean, generators=generators, checkpoint=False).run()
    (p0, w0), (p1, w1), (p2, w2), (p3, w3) = method.snapshots
    assert not all(torch.equal(a, b) for a, b in zip(p0, p1))  # CurveNet learns in epochs 0-1
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(p1, p2, p3))  # then stops
    assert torch.equal(w1, w2) and torch.equal(w1, w3) and not torch.equal(w0, w1)
    assert set(method.curvenet_calls) == {0, 1}  # CurveNet is not even evaluated after the freeze
    assert len(method.frozen_calls) == 2 * ctx.train.num_batches(64)
    for index, weights in method.frozen_calls:  # the real steps used the stored epoch-1 weights
        assert torch.equal(weights, w1[index])
    assert method.freeze_epoch == 2 and method.drw_start == 19  # recipe.milestones[0] + 1 (the code's >)


def test_freeze_defaults_to_the_first_milestone(workdirs):
    plan = _plan("curvenet", *TINY_PROBE)
    ctx, *_ = build_context(plan)
    assert CurveNetMethod(ctx, plan.cfg.method).freeze_epoch == 18  # digits recipe milestones [18, 24]


def test_lowest_loss_per_class_by_hand():
    # observed labels 0 0 0 1 1 2; mean losses 0.5 0.1 0.3 | 0.9 0.2 | 0.7
    losses = torch.tensor([[0.4, 0.6], [0.1, 0.1], [0.2, 0.4], [1.0, 0.8], [0.3, 0.1], [0.7, 0.7]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    # 2 per class: class 0 -> 1 (0.1), 2 (0.3); class 1 -> both (4, 3); class 2 -> 5; sorted positions
    assert lowest_loss_per_class(losses, labels, 3, 2).tolist() == [1, 2, 3, 4, 5]
    # by the last epoch instead: class 0 -> 1 (0.1), 2 (0.4); class 1 -> 4 (0.1), 3 (0.8); class 2 -> 5
    assert lowest_loss_per_class(losses, labels, 3, 1, "last").tolist() == [1, 4, 5]


def test_k0_uses_the_lowest_loss_training_samples_as_meta_set(workdirs, tmp_path):
    plan, ctx, clean, generators, cls, losses = _with_curves(
        tmp_path, "curvenet", "split.meta_per_class=0", "method.pseudo_meta_per_class=3", *TINY_RUN)
    assert ctx.meta is None
    method = cls(ctx, plan.cfg.method)
    Trainer(ctx, method, clean, generators=generators, checkpoint=False).run()
    labels = ctx.train.labels.cpu().numpy()
    expected = []
    for c in range(ctx.num_classes):  # by hand with numpy: the 3 lowest mean losses of each observed class
        rows = np.flatnonzero(labels == c)
        expected += rows[np.argsort(losses[rows].mean(1), kind="stable")[:3]].tolist()
    assert method.pseudo_meta_index.tolist() == sorted(expected)
    assert method.meta_sampler.meta is ctx.train and torch.equal(method.meta_sampler.subset, method.pseudo_meta_index)
    assert "pseudo_meta_clean_fraction" in method.diagnostics(method.phases()[-1], 3, clean)


def test_drw_switches_to_class_balanced_weights_of_observed_counts(workdirs, tmp_path):
    # by hand: counts (2, 1), beta 0.5: (1-0.5)/(1-0.25) = 2/3 and 0.5/0.5 = 1; x 2/(5/3) -> (0.8, 1.2)
    np.testing.assert_allclose(class_balanced_weights([2, 1], 0.5), [0.8, 1.2])
    np.testing.assert_allclose(class_balanced_weights([5, 7], 0.0), [1.0, 1.0])
    plan, ctx, clean, generators, cls, _ = _with_curves(tmp_path, "curvenet_drw")
    method = cls(ctx, plan.cfg.method)
    method.setup()
    allocate = method.phases()[-1]
    method.on_epoch_start(allocate, 18)  # epoch == first milestone: still all ones (the code's epoch > 80)
    assert torch.equal(method.class_weights, torch.ones(10))
    method.on_epoch_start(allocate, 19)
    expected = class_balanced_weights(ctx.class_counts, 0.9999)
    torch.testing.assert_close(method.class_weights, torch.as_tensor(expected, dtype=torch.float32))
    assert float(method.class_weights[-1]) > float(method.class_weights[0])  # the tail class weighs more


# -- timing -------------------------------------------------------------------------------------
def test_phase_timer_samples_every_nth_step():
    timer = PhaseTimer(torch.device("cpu"), every=2, skip=1)
    timed = []
    for step in range(6):
        before = timer.timed
        for phase in ("virtual", "meta_forward", "meta_backward", "real"):
            timer(phase)
        timer.end_step()
        timer.end_step()  # a step that marks nothing (CurveNet frozen, a probe step) is not counted
        timed.append(timer.timed > before)
    assert timed == [False, True, False, True, False, True]
    samples = timer.samples
    assert all(len(v) == 3 for v in samples.values()) and set(samples) == {"virtual", "meta_forward",
                                                                            "meta_backward", "real"}
    med = timer.medians()
    assert med["time_samples"] == 3.0
    assert med["time_meta_ms"] == pytest.approx(med["time_virtual_ms"] + med["time_meta_forward_ms"]
                                                + med["time_meta_backward_ms"])
    assert list(med)[:4] == ["time_virtual_ms", "time_meta_forward_ms", "time_meta_backward_ms", "time_real_ms"]
    restored = PhaseTimer(torch.device("cpu"), every=2, skip=1)
    restored.load_state_dict(timer.state_dict())
    assert restored.medians() == med and restored.steps == 6
    off = PhaseTimer(torch.device("cpu"), every=0)
    for _ in range(100):
        off("virtual")
        off.end_step()
    assert off.timed == 0 and off.medians() == {}


def test_the_engine_times_the_phases_any_method_marks(workdirs, tmp_path):
    """The engine's timer is behind ctx.mark_phase in every run; a method without timing_every
    (MW-Net) is not timed in training, and is once sampling is on."""
    from baselines.mwnet import MetaWeightNetNoise

    (plan,) = plan_suite("digits", ["method=mwnet_noise", *CELL, "recipe.epochs=2", "train.limit_batches=12"])
    ctx, clean, _, generators, _ = build_context(plan)
    trainer = Trainer(ctx, MetaWeightNetNoise(ctx, plan.cfg.method), clean, generators=generators, checkpoint=False)
    assert ctx.phase_marker is trainer.phase_timer and trainer.phase_timer.every == 0
    trainer.phase_timer.every = 20  # the default sampling of CurveNet's timing_every / timing_skip
    history = trainer.run().history
    steps = sum(h["steps"] for h in history)
    assert trainer.phase_timer.steps == steps and 11 <= steps <= 30  # every step marked; step 10 timed only
    diag = history[-1]["diagnostics"]
    assert {"time_meta_loss_ms", "time_meta_backward_ms", "time_real_ms", "time_meta_ms"} <= set(diag)
    assert diag["time_samples"] == 1.0
    assert diag["time_meta_ms"] == pytest.approx(diag["time_meta_loss_ms"] + diag["time_meta_backward_ms"])


# -- suites -------------------------------------------------------------------------------------
def test_table_suites_plan():
    def points(name, *overrides):
        return expand_grid(load_suite(name), list(overrides))[0]

    t8 = points("table8")
    assert len(t8) == 4 * 12 * 3 and {p["method.slmo"] for p in t8} == {0, 1, 2, 3}
    assert {(p["split.imbalance_factor"], p["split.noise_rate"]) for p in t8} == {
        (i, r) for i in (1, 10, 20) for r in (0.0, 0.2, 0.4, 0.6)}
    assert {p["method.hidden"] for p in points("table9", "method=curvenet")} == {32, 64, 96}
    assert {p["method.skip_first"] for p in points("table10", "method=curvenet")} == {5, 30, 60}
    assert {p["method"] for p in points("table10")} == {"ce", "curvenet"}
    t7 = points("table7")
    assert sorted(p["split.meta_per_class"] for p in t7 if p["method"] == "curvenet" and p["seed"] == 1) == [
        0, 10, 20, 50, 80, 100]
    assert {(p["method"], p["split.meta_per_class"]) for p in t7 if p["method"] != "curvenet"} == {
        ("ce", 100), ("mwnet_noise", 100)}
    t6 = points("table6")
    assert {p["method"] for p in t6} == {"ce", "mwnet_noise", "curvenet", "curvenet_drw"} and len(t6) == 4 * 6 * 3
    # composed runs (a narrowed few): the default CurveNet run is one run directory in tables 8, 9 and 10
    cell = ["method=curvenet", "seed=1", "split.imbalance_factor=20", "split.noise_rate=0.4"]
    (r8,), (r9,), (r10,) = (plan_suite(s, [*cell, o]) for s, o in (
        ("table8", "method.slmo=0"), ("table9", "method.hidden=64"), ("table10", "method.skip_first=5")))
    assert r8.run_dir == r9.run_dir == r10.run_dir and r8.cfg.model.name == "resnet32"
    assert r8.cfg.suite.tables == ["table8"] and r8.cfg.split.noise_model == "unif_prior"
    (r7,) = plan_suite("table7", ["method=curvenet", "seed=1", "split.meta_per_class=0"])
    assert r7.cfg.split.imbalance_factor == 20 and r7.cfg.split.noise_rate == 0.2  # k = 0 is not blocked
    (r6,) = plan_suite("table6", ["method=curvenet_drw", "seed=1", "split.imbalance_factor=10",
                                  "split.noise_rate=0.6"])  # mwnet_noise arrives with its own branch
    assert r6.cfg.model.name == "wrn16_8" and r6.cfg.method.drw


# -- bad input ----------------------------------------------------------------------------------
def test_sl_larger_than_the_stages_is_refused_at_plan_time():
    with pytest.raises(ConfigError, match=r"method.slmo=4 is larger than the 3 residual stages.*0\.\.3"):
        plan_suite("table8", ["method.slmo=4", "seed=1", "split.imbalance_factor=1", "split.noise_rate=0.0"])
    with pytest.raises(ConfigError, match="wrn16_8"):
        plan_suite("table6", ["method=curvenet", "method.slmo=5", "seed=1", "split.imbalance_factor=10",
                              "split.noise_rate=0.2"])


def test_s_as_large_as_the_probe_is_refused_at_plan_time():
    one = ["method=curvenet", "seed=1", "split.imbalance_factor=1", "split.noise_rate=0.0"]
    with pytest.raises(ConfigError, match=r"skip_first S=300 leaves no loss value.*300 epochs"):
        plan_suite("table10", [*one, "method.skip_first=300"])
    with pytest.raises(ConfigError, match="S=299"):
        plan_suite("table10", [*one, "method.skip_first=299"])  # the last epoch is dropped too
    plan_suite("table10", [*one, "method.skip_first=298"])  # D = 1 is fine


def test_curves_from_another_split_are_refused(workdirs, tmp_path):
    path = tmp_path / "foreign.npz"
    plan = _plan("curvenet", f"method.probe.curves_file={path}", "method.skip_first=1")
    ctx, *_ = build_context(plan)
    labels = ctx.train.labels.cpu().numpy()
    publish_curves(path, np.zeros((labels.size, 6)), labels, "0" * 64, {})
    with pytest.raises(ConfigError, match=r"recorded on split 000000000000.*another split"):
        load_curves(path, ctx.split_sha256, labels)
    # a wrong curves file is a cause the user can fix: one error, no permanent failed.json (issue 11)
    with pytest.raises(ConfigError, match="belong to another split"):
        run_planned(plan)
    assert records(workdirs["results"], "failed.json") == []
    with pytest.raises(ConfigError, match="does not match this run's training set"):
        load_curves(path, "0" * 64, labels[:-1])


def test_interrupted_curvenet_run_resumes_to_the_same_result(workdirs, tmp_path, monkeypatch):
    overrides = ["method=curvenet", *CELL, *TINY_PROBE, *TINY_RUN]
    reference, ref_model = reference_run(overrides)
    ref_weights = np.load(Path(reference["run_id"]) / "artifacts.npz")["weights"]  # run_id: its run dir

    monkeypatch.setenv("CURVEBENCH_SPLITS", str(tmp_path / "splits2"))  # so that this run probes too
    # killed inside the probe, inside the cyclic probe, just after the probe ended (its curves are
    # published, the allocating stage has not started), after the first epoch of the allocating stage
    # (the last checkpoint of a probe phase is gone), then inside the allocating stage
    plan2 = resumed_run(overrides, tmp_path / "again", monkeypatch, (1, 2, 2, 1, 1))
    resumed = assert_same_result(plan2.run_dir, reference, ref_model)
    assert [p["name"] for p in resumed["phases"]] == ["probe", "probe_cyclic", "allocate"]
    timed = [[e.get("time_samples") for e in rec["diagnostics"]["per_epoch"]] for rec in (reference, resumed)]
    assert timed[0] == timed[1] and timed[0][-1] >= 1  # timing samples survive the resumes
    assert np.array_equal(np.load(plan2.run_dir / "artifacts.npz")["weights"], ref_weights)
    assert not (plan2.run_dir / ".curvenet-probing").exists() and not list((tmp_path / "splits2").rglob("*.lock"))
