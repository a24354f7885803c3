"""MW-Net (noise, imbalance) and Dynamic Loss: hand-computed weights, targets, ranks and sizes; meta-
gradients against finite differences; BatchNorm isolation of the virtual and meta forwards; the
warm-up switch and the per-epoch pseudo-meta set. Tiny tensors only."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.dynamic_loss import (
    DynamicLoss,
    DynamicLossNet,
    class_ranks,
    dynamic_meta_loss,
    gumbel_hard,
    hierarchical_sample,
    hs_sizes,
    init_head,
    soft_cross_entropy,
)
from baselines.mwnet import MetaWeightNetImbalance, MetaWeightNetNoise, WeightNet, mwnet_meta_loss, weighted_loss
from curvebench.config import compose_config
from curvebench.data import spec_from_config
from curvebench.engine.augment import Normalize
from curvebench.engine.context import CleanLabels, TrainContext
from curvebench.engine.data import ImageSet, MetaSampler
from curvebench.engine.loop import Trainer
from curvebench.engine.method import Phase
from curvebench.engine.virtual import FunctionalModel, SGDRule, meta_backward
from curvebench.errors import ConfigError
from tests.helpers import assert_same_result, finite_difference_grad, reference_run, resumed_run


# ------------------------------------------------------------------------------------------------
# helpers: a tiny float64 network with BatchNorm, a fake training context
class TinyNet(nn.Module):
    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.linear = nn.Linear(3, k)

    def forward(self, x):
        return self.linear(F.relu(self.bn(self.conv(x))).mean((2, 3)))


@functools.lru_cache(maxsize=None)
def _cfg(method: str, *overrides: str):
    return compose_config(["experiment=digits", f"method={method}", "train.device=cpu", *overrides])


COUNTS = (14, 10, 6)  # observed class counts of the fake training set: n_min = 6


def _ctx(method: str, *overrides: str, tmp_path=None) -> tuple[TrainContext, CleanLabels]:
    torch.manual_seed(0)
    cfg = _cfg(method, *overrides)
    k = len(COUNTS)
    gens = {n: torch.Generator().manual_seed(i) for i, n in enumerate(("data", "meta", "method"))}
    norm = Normalize([0.3], [0.37], torch.device("cpu"))

    def image_set(n, labels, gen):
        images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
        return ImageSet(images, labels, k, norm, 1, False, gen, pad_mode="constant")

    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(COUNTS)])
    train = image_set(len(labels), labels, gens["data"])
    meta = image_set(4 * k, torch.arange(k).repeat(4), gens["meta"])
    test = image_set(6, torch.arange(k).repeat(2), gens["data"])
    clean_labels = labels.clone()
    clean_labels[::4] = (clean_labels[::4] + 1) % k  # every fourth observed label is wrong
    clean = CleanLabels(clean_labels, clean_labels != labels)
    ctx = TrainContext(cfg=cfg, device=torch.device("cpu"), num_classes=k, image_shape=(1, 8, 8), train=train,
                       test=test, meta=MetaSampler(meta), generator=gens["method"], run_dir=tmp_path,
                       cache_dir=tmp_path,
                       split_sha256="0" * 64, split=spec_from_config(cfg), seed=1)
    ctx.extra["generators"] = gens
    return ctx, clean


def _method(cls, *overrides, tmp_path=None):
    ctx, clean = _ctx(cls.name, *overrides, tmp_path=tmp_path)
    method = cls(ctx, ctx.cfg.method)
    method.setup()
    return method, ctx, clean


PHASE = Phase("train", 30, 8, final=True)


def _bn_buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()}


# ------------------------------------------------------------------------------------------------
# MW-Net: the weighting network and the two losses
def test_weight_net_output_by_hand():
    v = WeightNet(hidden=2).double()
    with torch.no_grad():
        v.linear1.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        v.linear1.bias.copy_(torch.tensor([0.0, 0.5]))
        v.linear2.weight.copy_(torch.tensor([[2.0, -1.0]]))
        v.linear2.bias.copy_(torch.tensor([-0.5]))
    w = v(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    # l=0: h = relu(0, 0.5) = (0, 0.5), z = 2*0 - 0.5 - 0.5 = -1.0
    # l=1: h = relu(1, -0.5) = (1, 0),  z = 2*1 - 0 - 0.5 = 1.5
    # l=2: h = relu(2, -1.5) = (2, 0),  z = 4 - 0.5 = 3.5
    expected = torch.tensor([1 / (1 + math.exp(1.0)), 1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(-3.5))],
                            dtype=torch.float64)
    torch.testing.assert_close(w, expected)
    assert w.shape == (3,)


def test_weight_net_shapes_and_default_init():
    torch.manual_seed(0)
    v = WeightNet()  # the official VNet(1, 100, 1): PyTorch's default Linear init, U(-1/sqrt(fan_in), ...)
    assert v.linear1.weight.shape == (100, 1) and v.linear2.weight.shape == (1, 100)
    assert v.linear1.weight.abs().max() <= 1.0 and v.linear1.bias.abs().max() <= 1.0  # fan_in 1
    assert v.linear2.weight.abs().max() <= 0.1 and v.linear2.bias.abs().max() <= 0.1  # fan_in 100
    w = v(torch.rand(7) * 5)
    assert w.shape == (7,) and bool(((w > 0) & (w < 1)).all())


def test_weighted_losses_by_hand():
    w, loss = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([1.0, 2.0, 3.0])
    # noise variant: mean_i w_i l_i = (0.2 + 0.6 + 1.5) / 3
    torch.testing.assert_close(weighted_loss(w, loss, normalize=False), torch.tensor(2.3 / 3))
    # imbalance variant: sum_i w_i l_i / sum_j w_j = 2.3 / 1.0
    torch.testing.assert_close(weighted_loss(w, loss, normalize=True), torch.tensor(2.3))
    # (0.1 * 1 + 0.1 * 3) / 0.2 = 2.0: normalisation makes the scale of w irrelevant
    torch.testing.assert_close(weighted_loss(torch.tensor([0.1, 0.1]), torch.tensor([1.0, 3.0]), True),
                               torch.tensor(2.0))


def test_zero_weight_sum_is_left_unnormalised_without_nan():
    w = torch.zeros(2, requires_grad=True)
    loss = torch.tensor([1.0, 3.0], requires_grad=True)
    out = weighted_loss(w, loss, normalize=True)
    assert out.item() == 0.0
    out.backward()
    assert torch.isfinite(w.grad).all() and torch.isfinite(loss.grad).all()
    torch.testing.assert_close(w.grad, torch.tensor([1.0, 3.0]))  # d/dw_i sum_j w_j l_j = l_i


@pytest.mark.parametrize("normalize,detach", [(False, True), (True, False)], ids=["noise", "imb"])
def test_mwnet_meta_gradient_matches_finite_differences(normalize, detach):
    torch.manual_seed(0)
    model, vnet = TinyNet().double(), WeightNet(hidden=5).double()
    x, y = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    xm, ym = torch.randn(5, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    fm = FunctionalModel(model)

    def meta_loss():
        return mwnet_meta_loss(fm, fm.params(), vnet, x, y, xm, ym, 0.5, normalize, detach)

    meta_backward(meta_loss(), vnet.parameters())
    analytic = torch.cat([p.grad.flatten() for p in vnet.parameters()])
    numeric = finite_difference_grad(meta_loss, list(vnet.parameters()))
    assert analytic.abs().max() > 1e-6
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_mwnet_imb_virtual_gradient_flows_through_the_vnet_input():
    """With the graph kept on V's input (imbalance code), the virtual step differs from the detached one."""
    torch.manual_seed(1)
    model, vnet = TinyNet().double(), WeightNet(hidden=5).double()
    x, y = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    xm, ym = torch.randn(5, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    fm = FunctionalModel(model)
    a = mwnet_meta_loss(fm, fm.params(), vnet, x, y, xm, ym, 0.5, True, False)
    b = mwnet_meta_loss(fm, fm.params(), vnet, x, y, xm, ym, 0.5, True, True)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("cls", [MetaWeightNetNoise, MetaWeightNetImbalance], ids=["noise", "imb"])
def test_mwnet_real_step_uses_the_updated_vnet(cls, tmp_path):
    """After the meta step, the classifier's step is the recipe optimiser's step on the weighted loss with
    weights recomputed by the updated V (normalised for the imbalance variant), and the real model's
    BatchNorm statistics equal those of the real forward alone."""
    method, ctx, _ = _method(cls, tmp_path=tmp_path)
    method.on_epoch_start(PHASE, 3)
    batch = ctx.train.batch(torch.arange(0, 30, 3))
    twin, twin_opt = copy.deepcopy(method.model), None
    twin_opt = ctx.build_optimizer(twin.parameters())
    twin_opt.load_state_dict(method.optimizer.state_dict())
    vnet_before = copy.deepcopy(method.vnet)
    method.train_step(batch, PHASE, 3)
    assert any(not torch.equal(a, b) for a, b in zip(vnet_before.parameters(), method.vnet.parameters()))
    losses = F.cross_entropy(twin(batch.x), batch.y, reduction="none")
    with torch.no_grad():
        w = method.vnet(losses)
    loss = (w * losses).sum() / w.sum() if cls.normalize else (w * losses).mean()
    twin_opt.zero_grad()
    loss.backward()
    twin_opt.step()
    for (n, p), q in zip(method.model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, msg=n)
    for (n, b), c in zip(method.model.named_buffers(), twin.buffers()):
        assert torch.equal(b, c), f"{n}: the meta step changed the real BatchNorm statistics"
    torch.testing.assert_close(method.sample_weight[batch.index], w)
    assert torch.isnan(method.sample_weight[1]).item()  # not in this batch


def test_mwnet_imb_meta_set_is_k_per_class_and_batches_are_random(tmp_path):
    method, ctx, _ = _method(MetaWeightNetImbalance, "method.meta_per_class=2", tmp_path=tmp_path)
    assert len(method.meta_sampler) == 2 * len(COUNTS)
    assert np.bincount(method.meta_sampler.labels.numpy()).tolist() == [2, 2, 2]
    noise, _, _ = _method(MetaWeightNetNoise, tmp_path=tmp_path)
    assert noise.meta_sampler is noise.ctx.meta and len(noise.meta_sampler) == 12
    with pytest.raises(ConfigError, match="meta_per_class=20 exceeds"):
        MetaWeightNetImbalance.check_config(_cfg("mwnet_imb", "method.meta_per_class=20"))


def _first_meta_batches(method, ctx, epochs, steps):
    """Run ``steps`` train steps in each of ``epochs``; return, per epoch, the meta generator's state at
    the epoch's start (after on_epoch_start) and the positions of every meta batch drawn."""
    drawn, original = [], method.meta_sampler.next_batch

    def spy(batch_size, augment=True):
        out = original(batch_size, augment)
        drawn[-1][1].append(out.index.clone())
        return out

    method.meta_sampler.next_batch = spy
    for epoch in epochs:
        method.on_epoch_start(PHASE, epoch)
        drawn.append((method.meta_sampler.meta.generator.get_state(), []))
        for i in range(steps):
            method.train_step(ctx.train.batch(torch.arange(i, 30, 3)), PHASE, epoch)
    return drawn


def test_mwnet_noise_meta_pass_restarts_every_epoch(tmp_path):
    """MW-Net.py creates a new iterator of the meta loader at every epoch: the first meta batch of each
    epoch is the first batch of a fresh permutation drawn from the meta generator (12 meta images,
    batch 8: cycling across epochs would start epoch 1 with the 4 images left from epoch 0)."""
    method, ctx, _ = _method(MetaWeightNetNoise, tmp_path=tmp_path)
    assert method.cfg.meta_restart_each_epoch is True and len(method.meta_sampler) == 12
    drawn = _first_meta_batches(method, ctx, epochs=(0, 1, 2), steps=2)
    for state, batches in drawn:
        fresh = torch.randperm(12, generator=torch.Generator().set_state(state))
        assert torch.equal(batches[0], fresh[:8])  # the meta set's positions = the permutation
        assert torch.equal(batches[1], fresh[8:])  # within an epoch the pass continues (last batch smaller)
    # the flag off: one pass cycles across epochs, as before
    method, ctx, _ = _method(MetaWeightNetNoise, "method.meta_restart_each_epoch=false", tmp_path=tmp_path)
    (_, first), (_, second) = _first_meta_batches(method, ctx, epochs=(0, 1), steps=1)
    assert first[0].shape == (8,) and second[0].shape == (4,)
    assert set(torch.cat([first[0], second[0]]).tolist()) == set(range(12))


def test_mwnet_imb_draws_a_fresh_random_meta_batch_every_iteration(tmp_path):
    """The imbalance code's ``next(iter(loader))`` per iteration: each meta batch is the head of a new
    permutation, in every epoch; nothing restarts at the epoch boundary (no key for it)."""
    method, ctx, _ = _method(MetaWeightNetImbalance, "method.meta_per_class=4", tmp_path=tmp_path)
    assert "meta_restart_each_epoch" not in method.cfg
    states, batches = [], []
    original = method.meta_sampler.random_batch

    def spy(batch_size, augment=True):
        states.append(method.meta_sampler.meta.generator.get_state())
        out = original(batch_size, augment)
        batches.append(out.index.clone())
        return out

    method.meta_sampler.random_batch = spy
    for epoch in (0, 1):
        method.on_epoch_start(PHASE, epoch)
        for i in range(2):
            method.train_step(ctx.train.batch(torch.arange(i, 30, 3)), PHASE, epoch)
    assert len(batches) == 4
    for state, got in zip(states, batches):
        assert torch.equal(got, torch.randperm(12, generator=torch.Generator().set_state(state))[:8])


def test_mwnet_diagnostics_mean_weight_clean_and_noisy(tmp_path):
    method, ctx, clean = _method(MetaWeightNetNoise, tmp_path=tmp_path)
    method.sample_weight.fill_(float("nan"))
    method.sample_weight[:8] = torch.tensor([0.1, 0.9, 0.9, 0.9, 0.3, 0.7, 0.7, 0.7])
    # samples 0 and 4 are noisy (every fourth label flipped): mean(0.1, 0.3) = 0.2; clean: mean(0.9, 0.7) = 0.8
    d = method.diagnostics(PHASE, 0, clean)
    assert d["mean_weight_noisy"] == pytest.approx(0.2) and d["mean_weight_clean"] == pytest.approx(0.8)
    assert d["mean_weight"] == pytest.approx(0.65)


def test_mwnet_diagnostics_leave_out_samples_of_unknown_clean_label(tmp_path):
    method, ctx, clean = _method(MetaWeightNetNoise, tmp_path=tmp_path)
    method.sample_weight.fill_(float("nan"))
    method.sample_weight[:8] = torch.tensor([0.1, 0.9, 0.9, 0.9, 0.3, 0.7, 0.7, 0.7])
    labels = clean.labels.clone()
    labels[[0, 1]] = -1  # clean labels unknown: sample 0 (was noisy) and 1 (was clean)
    unknown = CleanLabels(labels, (labels >= 0) & (labels != ctx.train.labels))
    d = method.diagnostics(PHASE, 0, unknown)
    # noisy: sample 4 only (0.3); clean: samples 2, 3, 5, 6, 7 -> (0.9 + 0.9 + 0.7 + 0.7 + 0.7) / 5 = 0.78
    assert d["mean_weight_noisy"] == pytest.approx(0.3) and d["mean_weight_clean"] == pytest.approx(0.78)
    assert d["mean_weight"] == pytest.approx(0.65)  # every weighted sample, whatever its clean label


# ------------------------------------------------------------------------------------------------
# Dynamic Loss
def test_rank_formula_by_hand():
    loss = torch.tensor([0.5, 0.2, 0.1, 0.9, 0.3, 0.7])
    labels = torch.tensor([0, 1, 0, 0, 1, 2])
    # class 0 (n=3), ascending loss: idx 2 (j=0), idx 0 (j=1), idx 3 (j=2): floor(j / 4 * 100) = 0, 25, 50
    # class 1 (n=2): idx 1 (j=0), idx 4 (j=1): floor(j / 3 * 100) = 0, 33
    # class 2 (n=1): idx 5: 0
    assert class_ranks(loss, labels, 3, 100).tolist() == [25, 0, 0, 50, 33, 0]
    # R = 10, one class of 9: floor(j / 10 * 10) = j
    ranks = class_ranks(torch.arange(9.0).flip(0), torch.zeros(9, dtype=torch.int64), 1, 10)
    assert ranks.tolist() == list(range(9))[::-1]


def test_hs_sizes_by_hand():
    assert hs_sizes(500, 0.5, 0.5) == (250, 125)  # CIFAR-10 IF 10: 1,250 pseudo-meta samples
    assert hs_sizes(6, 0.5, 0.5) == (3, 1)  # int(3.0), int(1.5)
    assert hs_sizes(7, 0.5, 0.5) == (3, 1)  # int(3.5), int(1.75)
    assert hs_sizes(3, 0.5, 0.5) == (1, 0)


def test_hierarchical_sampling_keeps_the_lowest_loss_of_the_random_level():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    loss = torch.tensor([0.3, 0.1, 0.2, 0.9, 0.4, 0.6, 0.5])
    gen = torch.Generator().manual_seed(0)
    # m1 = class size of class 0: the level-1 draw keeps everything there; m2 = 2 lowest: positions 1, 2
    chosen = hierarchical_sample(loss, labels, 2, 3, 2, gen)
    assert chosen[:2].tolist() == [1, 2] and chosen.shape == (4,)
    for _ in range(5):  # class 1 (4 samples): 3 random, the 2 lowest-loss of those
        chosen = hierarchical_sample(loss, labels, 2, 3, 2, gen)
        picked = chosen[2:].tolist()
        assert len(picked) == 2 and set(picked) <= {3, 4, 5, 6}
        assert 3 not in picked  # the highest loss in class 1 can never be among the 2 lowest of 3


def test_label_corrector_and_margin_generator_init():
    torch.manual_seed(0)
    net = DynamicLossNet(num_classes=5, h_dim=8, rank_num=10)
    assert net.rank_emb.shape == (10, 8) and net.cls_emb.shape == (1, 8)
    assert net.lc[4].out_features == 5 and net.mg[4].out_features == 5  # classwise LC: one output per class
    for mlp, final in ((net.lc, 3.98), (net.mg, 1.0)):
        assert torch.equal(mlp[0].bias, torch.zeros(8)) and torch.equal(mlp[2].bias, torch.zeros(8))
        assert torch.equal(mlp[4].bias, torch.full((5,), final))
    assert net.rank_emb.abs().max() <= math.sqrt(6 / (10 + 8))  # Xavier-uniform bound
    with torch.no_grad():
        net.lc[4].weight.zero_()
        net.mg[4].weight.zero_()
    a = net.confidence(torch.tensor([0, 9]), torch.tensor([1, 4]))
    torch.testing.assert_close(a, torch.full((2,), 1 / (1 + math.exp(-3.98))))  # 0.98165
    torch.testing.assert_close(net.margin(), torch.ones(1, 5))


def test_dynamic_loss_head_is_initialised_as_the_official_linear_head(tmp_path):
    """linear_head.py: mmcls LinearClsHead, init_cfg Normal(layer='Linear', std=0.01): weight ~ N(0, 0.01^2),
    bias 0. The rest of the backbone keeps its init; ``head_init_std: null`` keeps the backbone's head."""
    from curvebench.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet32", 100)
    before = {n: p.clone() for n, p in model.named_parameters()}
    head = init_head(model, 0.01)
    assert head is model.linear and head.weight.shape == (100, 64) and head.bias.shape == (100,)
    assert torch.equal(head.bias, torch.zeros(100))
    w = head.weight.detach().double()
    assert abs(float(w.mean())) < 0.01 * 4 / math.sqrt(w.numel())  # 6400 draws: 4 standard errors
    assert float(w.std()) == pytest.approx(0.01, rel=0.05)
    assert float((w.abs() < 0.01).double().mean()) == pytest.approx(0.6827, abs=0.03)  # normal, not uniform
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (not n.startswith("linear.")), n

    method, ctx, _ = _method(DynamicLoss, tmp_path=tmp_path)
    assert method.cfg.head_init_std == 0.01
    lin = method.model.linear
    assert lin.weight.shape == (len(COUNTS), method.model.feature_dim) and torch.equal(lin.bias, torch.zeros(3))
    assert float(lin.weight.detach().abs().max()) < 0.06  # the default Linear init draws up to 1/sqrt(64) = 0.125
    plain, ctx, _ = _method(DynamicLoss, "method.head_init_std=null", tmp_path=tmp_path)
    torch.manual_seed(0)
    reference = ctx.build_model()  # _ctx seeds 0 before setup, so setup builds this very network
    for (n, p), q in zip(plain.model.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), n
    assert int(torch.count_nonzero(plain.model.linear.bias)) > 0
    with pytest.raises(ConfigError, match="head_init_std must be null"):
        DynamicLoss.check_config(_cfg("dynamic_loss", "method.head_init_std=0"))


def test_corrected_target_and_soft_cross_entropy_by_hand():
    net = DynamicLossNet(num_classes=3, h_dim=4, rank_num=5)
    with torch.no_grad():
        net.lc[4].weight.zero_()
        net.lc[4].bias.copy_(torch.tensor([math.log(4.0), 0.0, -5.0]))  # sigmoid: 0.8, 0.5, 0.0067
    q = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    t = net.target(torch.tensor([2, 3]), torch.tensor([0, 1]), q)
    # sample 0: y = 0, a = 0.8: 0.8 * (1, 0, 0) + 0.2 * (0, 0, 1); sample 1: y = 1, a = 0.5
    torch.testing.assert_close(t, torch.tensor([[0.8, 0.0, 0.2], [0.5, 0.5, 0.0]]))
    # soft CE of logits (1, 0, 0) against (0.8, 0, 0.2): logsumexp = log(e + 2) = 1.551445
    # -(0.8 * (1 - 1.551445) + 0.2 * (0 - 1.551445)) = 0.441156 + 0.310289
    ce = soft_cross_entropy(torch.tensor([[1.0, 0.0, 0.0]]), t[:1])
    torch.testing.assert_close(ce, torch.tensor([0.751445]), rtol=1e-5, atol=1e-6)
    no_lc = DynamicLossNet(num_classes=3, h_dim=4, rank_num=5, use_lc=False, use_mg=False)
    torch.testing.assert_close(no_lc.target(torch.tensor([2]), torch.tensor([1]), q[:1]),
                               torch.tensor([[0.0, 1.0, 0.0]]))
    torch.testing.assert_close(no_lc.margin(), torch.zeros(1, 3))


def test_gumbel_hard_sample():
    gen = torch.Generator().manual_seed(0)
    q = gumbel_hard(torch.tensor([[50.0, 0.0, 0.0], [0.0, 0.0, 50.0]]).repeat(100, 1), gen)
    assert torch.equal(q.sum(1), torch.ones(200)) and set(q.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(q.argmax(1), torch.tensor([0, 2]).repeat(100))
    # probabilities softmax(log p): p = (0.7, 0.2, 0.1)
    freq = gumbel_hard(torch.tensor([[0.7, 0.2, 0.1]]).log().repeat(20000, 1), gen).mean(0)
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)


def test_dynamic_loss_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model, net = TinyNet().double(), DynamicLossNet(num_classes=3, h_dim=3, rank_num=4).double()
    x, y = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    xm, ym = torch.randn(5, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    rank = torch.tensor([0, 1, 2, 3, 3, 1])
    q = F.one_hot(torch.tensor([2, 0, 1, 1, 0, 2]), 3).double()
    with torch.no_grad():
        net.lc[4].bias.fill_(0.5)  # away from saturation, so that every parameter gets a sizeable gradient
        for mlp in (net.lc, net.mg):  # non-zero hidden biases: no ReLU input sits exactly on its kink
            mlp[0].bias.uniform_(0.1, 0.3)
            mlp[2].bias.uniform_(0.1, 0.3)
    rule = SGDRule(0.3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    bufs = {n: torch.randn_like(p) * 0.1 for n, p in model.named_parameters()}
    fm = FunctionalModel(model)

    def meta_loss():
        return dynamic_meta_loss(fm, fm.params(), net, x, y, rank, lambda z: q, xm, ym, rule, bufs)[0]

    meta_backward(meta_loss(), net.parameters())
    analytic = torch.cat([p.grad.flatten() for p in net.parameters()])
    numeric = finite_difference_grad(meta_loss, list(net.parameters()))
    assert net.mg[4].bias.grad.abs().max() > 1e-6 and net.lc[4].bias.grad.abs().max() > 1e-6
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_dynamic_loss_warm_up_switch_and_pseudo_meta_set(tmp_path):
    method, ctx, clean = _method(DynamicLoss, "method.warm_epochs=2", tmp_path=tmp_path)
    assert [method.is_warm(e) for e in range(4)] == [True, True, False, False]
    default, _, _ = _method(DynamicLoss, tmp_path=tmp_path)
    assert default.warm_epochs == ctx.cfg.recipe.warmup_epochs == 2  # null: the recipe's warm-up length
    method.on_epoch_start(PHASE, 1)
    assert method.train_subset(PHASE).shape == (30,) and method.meta_positions.numel() == 0
    assert method.rank.tolist() == class_ranks(method.epoch_losses(), ctx.train.labels, 3, 100).tolist()
    method.on_epoch_start(PHASE, 2)
    # n_min = 6: m1 = 3, m2 = 1 per class, removed from this epoch's training positions
    subset = method.train_subset(PHASE)  # the engine reads it after on_epoch_start, every epoch
    assert method.meta_positions.shape == (3,) and subset.shape == (27,)
    assert sorted(ctx.train.labels[method.meta_positions].tolist()) == [0, 1, 2]
    assert not set(subset.tolist()) & set(method.meta_positions.tolist())
    assert set(subset.tolist()) | set(method.meta_positions.tolist()) == set(range(30))
    assert len(method.meta_sampler) == 3
    method.on_epoch_start(PHASE, 1)
    assert method.train_subset(PHASE).shape == (30,)


def test_dynamic_loss_lc_warm_up_runs_below_the_iteration_limit(tmp_path):
    method, ctx, _ = _method(DynamicLoss, "method.warm_epochs=2", "method.lc_warmup_iters=1", tmp_path=tmp_path)
    method.on_epoch_start(PHASE, 0)
    batch = ctx.train.batch(torch.arange(8))
    before = copy.deepcopy(method.metanet.state_dict())
    method.train_step(batch, PHASE, 0)  # iteration 0 < 1: the LC learns to reproduce the observed label
    assert not torch.equal(before["lc.4.bias"], method.metanet.lc[4].bias)
    assert torch.equal(before["mg.4.bias"], method.metanet.mg[4].bias)  # the MG is not trained in warm-up
    assert method.iteration == 1 and bool((method.corrected[:8] >= 0).all())
    after = copy.deepcopy(method.metanet.state_dict())
    method.train_step(batch, PHASE, 0)  # iteration 1: no more LC training
    for key, value in after.items():
        assert torch.equal(value, method.metanet.state_dict()[key]), key


def test_dynamic_loss_meta_step_leaves_batchnorm_to_the_real_step(tmp_path):
    method, ctx, _ = _method(DynamicLoss, "method.warm_epochs=0", tmp_path=tmp_path)
    method.on_epoch_start(PHASE, 0)
    batch = ctx.train.batch(method.train_subset(PHASE)[:8])
    twin = copy.deepcopy(method.model)
    before = copy.deepcopy(method.metanet.state_dict())
    method.train_step(batch, PHASE, 0)
    assert any(not torch.equal(v, method.metanet.state_dict()[k]) for k, v in before.items())
    twin(batch.x)  # the real step's forward alone
    for (n, b), c in zip(method.model.named_buffers(), twin.buffers()):
        assert torch.equal(b, c), f"{n}: a virtual or meta forward changed the real BatchNorm statistics"
    assert bool((method.corrected[batch.index] >= 0).all())


def test_dynamic_loss_trains_through_the_engine_without_its_pseudo_meta_set(tmp_path):
    """The engine reads train_subset once per phase; the in-place update must reach every epoch."""
    method, ctx, clean = _method(DynamicLoss, "method.warm_epochs=1", "recipe.epochs=3", "recipe.batch_size=3",
                                 tmp_path=tmp_path)
    method.setup = lambda: None  # already set up
    seen = []
    step = method.train_step

    def spy(batch, phase, epoch):
        seen.append((epoch, set(batch.index.tolist()), set(method.meta_positions.tolist())))
        return step(batch, phase, epoch)

    method.train_step = spy
    method.phases = lambda: [Phase("train", 3, 3, final=True)]
    out = Trainer(ctx, method, clean, generators=ctx.extra["generators"], checkpoint=False).run()
    assert [h["steps"] for h in out.history] == [10, 9, 9]  # 30 samples, then 27 (3 in the pseudo-meta set)
    assert sum(len(s) for e, s, _ in seen if e == 0) == 30
    for epoch, index, meta in seen:
        assert not index & meta
    assert {"meta_loss", "finetune_loss", "pseudo_meta_size"} <= set(out.history[1]["logs"])
    diag = out.history[-1]["diagnostics"]
    assert {"lc_acc", "lc_acc_noisy", "lc_acc_clean", "hs_clean_rate"} <= set(diag)


def test_dynamic_loss_diagnostics_label_correction_accuracy(tmp_path):
    method, ctx, clean = _method(DynamicLoss, "method.warm_epochs=0", tmp_path=tmp_path)
    method.corrected.fill_(-1)
    # samples 0, 4 are noisy (observed 0, clean 1); 1, 2 are clean (label 0)
    method.corrected[[0, 4, 1, 2]] = torch.tensor([1, 0, 0, 2])
    d = method.diagnostics(PHASE, 0, clean)
    assert d["lc_acc_noisy"] == pytest.approx(0.5) and d["lc_acc_clean"] == pytest.approx(0.5)
    assert d["lc_acc"] == pytest.approx(0.5)


def test_dynamic_loss_config_checks():
    with pytest.raises(ConfigError, match="first_select_ratio must be in"):
        DynamicLoss.check_config(_cfg("dynamic_loss", "method.first_select_ratio=0"))
    with pytest.raises(ConfigError, match="union_clean_meta=true needs a clean meta set"):
        DynamicLoss.check_config(_cfg("dynamic_loss", "method.union_clean_meta=true", "split.meta_per_class=0"))


def test_dynamic_loss_union_with_the_clean_meta_set(tmp_path):
    method, ctx, _ = _method(DynamicLoss, "method.union_clean_meta=true", "method.warm_epochs=0", tmp_path=tmp_path)
    method.on_epoch_start(PHASE, 0)
    # 3 pseudo-meta training samples + the 12 clean meta images (positions 30..41 of the pool)
    assert method.meta_positions.shape == (15,) and method.meta_positions[3:].tolist() == list(range(30, 42))
    assert torch.equal(method.pool.labels[30:], ctx.meta.labels)
    assert method.train_subset(PHASE).shape == (27,)


# ------------------------------------------------------------------------------------------------
# resume: method state (V-Net, meta-net, optimisers, iteration counter, pseudo-meta set) survives
@pytest.mark.slow
@pytest.mark.parametrize("method", ["mwnet_noise", "mwnet_imb", "dynamic_loss"])
def test_interrupted_run_resumes_to_the_same_result(workdirs, tmp_path, monkeypatch, method):
    overrides = [f"method={method}", "seed=1", "split.imbalance_factor=10", "split.noise_rate=0.4",
                 "recipe.epochs=3", "train.deterministic=true"]
    if method == "dynamic_loss":
        overrides.append("method.warm_epochs=1")
    reference, ref_weights = reference_run(overrides)
    # killed after epoch 1 (the first meta epoch of dynamic_loss)
    plan2 = resumed_run(overrides, tmp_path / "again", monkeypatch, 2)
    resumed = assert_same_result(plan2.run_dir, reference, ref_weights)
    assert resumed["diagnostics"] == reference["diagnostics"]
