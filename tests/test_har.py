"""HAR: BatchNorm selection per model, the pre-affine gradient identity, the regulariser and the
class weights by hand, the estimation phases, and resuming inside them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from baselines.har import (
    BNOutputRecorder,
    har_class_weights,
    har_regulariser,
    pooled_class_error,
    scaled_recipe,
    stage_batchnorms,
)
from curvebench.config import validate_config
from curvebench.engine.reweighting import class_balanced_weights
from curvebench.engine.schedules import recipe_lr
from curvebench.errors import ConfigError
from curvebench.models import build_model
from tests.helpers import assert_same_result, reference_run, resumed_run
from tests.methodhelpers import config, labels_from_counts, make_method


# -- which BatchNorm layers ---------------------------------------------------------------------
@pytest.mark.parametrize("name,channels,count,first,last", [
    ("resnet32", 3, 30, "layer1.0.bn1", "layer3.4.bn2"),
    ("resnet8", 3, 6, "layer1.0.bn1", "layer3.0.bn2"),
    ("wrn16_8", 3, 12, "block1.0.bn1", "block3.1.bn2"),
    ("digits_cnn", 1, 3, "stage1.1", "stage3.1"),
])
def test_stage_batchnorms_per_model(name, channels, count, first, last):
    model = build_model(name, 10, in_channels=channels)
    bns = stage_batchnorms(model)
    names = [n for n, _ in bns]
    assert len(bns) == count and names[0] == first and names[-1] == last
    if name.startswith("resnet"):
        assert all(bn is not model.bn1 for _, bn in bns)  # the stem BN is excluded
    if name == "wrn16_8":
        assert all(bn is not model.bn1 for _, bn in bns)  # the final pre-pool BN too
    if name == "digits_cnn":
        assert all(bn is not model.stem[1] for _, bn in bns)
    # the recorder sees every one of them, once, in forward order, in one forward pass
    rec = BNOutputRecorder([bn for _, bn in bns])
    with rec.record() as outs:
        model(torch.randn(2, channels, 8, 8))
    assert len(outs) == count
    model(torch.randn(2, channels, 8, 8))  # outside record(): nothing collected
    assert len(rec.outputs) == count


def test_gradient_wrt_pre_affine_output_is_gamma_times_gradient_wrt_bn_output():
    """HAR differentiates w.r.t. x_hat (before gamma, beta); we record y = gamma x_hat + beta."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    head = nn.Linear(3, 4)
    x = torch.randn(5, 3, 2, 2)
    target = torch.tensor([0, 1, 2, 3, 0])

    def rest(y):
        return F.cross_entropy(head(F.relu(y).mean((2, 3))), target)

    # explicit: x_hat = (x - mean) / sqrt(var + eps) with the biased batch variance
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    x_hat = ((x - mean) / torch.sqrt(var + bn.eps)).requires_grad_()
    y_manual = bn.weight[None, :, None, None] * x_hat + bn.bias[None, :, None, None]
    (g_hat,) = torch.autograd.grad(rest(y_manual), x_hat)
    # recorded: the module's output
    rec = BNOutputRecorder([bn])
    with rec.record() as outs:
        y = bn(x)
    assert torch.allclose(y, y_manual, atol=1e-5)
    (g_y,) = torch.autograd.grad(rest(y), outs)
    assert torch.allclose(bn.weight.detach()[None, :, None, None] * g_y, g_hat, atol=1e-6)


class Toy(nn.Module):
    """x [B,1,1,2] -> BN(1, eps ~0, gamma 2, beta 0) -> mean over the 2 pixels -> Linear(1, 2, W=(1,-1), b=0)."""

    slmo_groups = (("stem",), ("stage",))
    classifier = "linear"

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Identity()
        self.stage = nn.BatchNorm2d(1, eps=1e-300)  # exactly 1 / sqrt(1 + eps) = 1 in float64
        self.linear = nn.Linear(1, 2)
        with torch.no_grad():
            self.stage.weight.fill_(2.0)
            self.stage.bias.zero_()
            self.linear.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(self.stage(self.stem(x)).mean((2, 3)))


def test_har_regulariser_by_hand():
    model = Toy().double()
    x = torch.tensor([[[[0.0, 0.0]]], [[[2.0, 2.0]]]], dtype=torch.float64)  # batch mean 1, var 1
    y = torch.tensor([0, 0])
    tau = torch.tensor([1.0, 0.5], dtype=torch.float64)
    # x_hat = -1, +1 per sample; y = 2 x_hat; features -2, +2; logits (-2, 2) and (2, -2)
    # d(mean CE)/d logits_i = (p_i - e_0) / B; d/d feature_i = W^T (p_i - e_0) / B
    #   sample 0: p = (s(-4), s(4)) -> W^T(p - e_0) = (s(-4) - 1) - s(4) = -2 s(4)
    #   sample 1: p = (s(4), s(-4)) -> -2 s(-4)
    # d/d y (each of the 2 pixels) = that / (B * 2 pixels); d/d x_hat = gamma (= 2) times it
    #   sample 0: 2 * (-2 s(4)) / 4 = -s(4) per pixel -> L2 norm over 2 pixels: sqrt(2) s(4)
    #   sample 1: sqrt(2) s(-4)
    s = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    expect = (1.0 * math.sqrt(2) * s(4) + 0.5 * math.sqrt(2) * s(-4)) / 2
    (name, bn), = stage_batchnorms(model)
    assert name == "stage"
    rec = BNOutputRecorder([bn])
    with rec.record() as outs:
        logits = model(x)
    ce = F.cross_entropy(logits, y)
    reg = har_regulariser(ce, outs, rec.gammas(), tau)
    assert float(reg.detach()) == pytest.approx(expect, rel=1e-10)
    # double backprop: the regulariser has a gradient w.r.t. the parameters
    reg.backward()
    assert model.linear.weight.grad is not None and model.linear.weight.grad.abs().sum() > 0
    assert model.stage.weight.grad is not None and model.stage.weight.grad.abs().sum() > 0


# -- class weights ------------------------------------------------------------------------------
def test_pooled_error_and_class_weights_by_hand():
    correct = np.array([[3, 0, 1], [1, 2, 0]])
    total = np.array([[4, 2, 1], [4, 2, 0]])
    err = pooled_class_error(correct, total)  # (3+1)/(4+4), (0+2)/(2+2), 1/1 -> errors 0.5, 0.5, 0
    np.testing.assert_allclose(err, [0.5, 0.5, 0.0])
    # reg = err^0.6 / n^0.4 with n = (32, 1, 1): 32^0.4 = 4 -> (0.5^0.6 / 4, 0.5^0.6, 0) / 0.5^0.6
    np.testing.assert_allclose(har_class_weights(err, [32, 1, 1]), [0.25, 1.0, 0.0], rtol=1e-12)
    # one fold with a class never held out: error 1; a class never observed: weight 0
    err1 = pooled_class_error([[1, 0, 0]], [[2, 0, 0]])
    np.testing.assert_allclose(err1, [0.5, 1.0, 1.0])
    w = har_class_weights(err1, [243, 1, 0])  # 243^0.4 = 3^2 = 9
    np.testing.assert_allclose(w, [0.5 ** 0.6 / 9, 1.0, 0.0], rtol=1e-12)
    np.testing.assert_array_equal(har_class_weights([0.0, 0.0], [3, 4]), [0.0, 0.0])  # perfect: no regulariser


# -- phases, folds, schedules -------------------------------------------------------------------
COUNTS = [9, 8, 7, 6, 5, 4, 3, 3, 2, 2]  # 49 samples: halves of 24 and 25


def test_fold_phases_and_halves():
    m = make_method("har", labels_from_counts(COUNTS))
    phases = m.phases()
    assert [(p.name, p.epochs, p.final, p.evaluate) for p in phases] == [
        ("estimate_fold1", 30, False, False), ("estimate_fold2", 30, False, False), ("train", 30, True, True)]
    a, b = m.train_subset(phases[0]), m.train_subset(phases[1])
    assert (len(a), len(b)) == (24, 25) and m.train_subset(phases[2]) is None
    assert sorted(torch.cat([a, b]).tolist()) == list(range(49))
    assert m._fold_data(0) == (a, b) and torch.equal(m._fold_data(1)[1], a)
    assert len(m.est_models) == 2 and m.est_models[0] is not m.est_models[1]
    assert all(m.est_models[0].state_dict()[k].shape == v.shape for k, v in m.model.state_dict().items())
    one = make_method("har", labels_from_counts(COUNTS), "method.folds=1", "method.est_epochs=5")
    assert [(p.name, p.epochs) for p in one.phases()] == [("estimate_fold1", 5), ("train", 30)]


def test_estimation_schedule_is_the_recipe_scaled():
    recipe = config("method=har").recipe  # digits: 30 epochs, warm-up 2, x0.1 at 18 and 24
    assert scaled_recipe(recipe, 30) == OmegaConf.to_container(recipe)
    r = scaled_recipe(recipe, 15)
    assert (r["epochs"], r["milestones"], r["warmup_epochs"]) == (15, [9, 12], 1)
    m = make_method("har", labels_from_counts(COUNTS), "method.est_epochs=15")
    fold = m.phases()[0]
    for epoch, lr in ((0, 0.05), (8, 0.05), (9, 0.005), (12, 0.0005), (14, 0.0005)):
        m.on_epoch_start(fold, epoch)
        assert m.est_optimizers[0].param_groups[0]["lr"] == pytest.approx(lr)
        assert recipe_lr(r, epoch) == pytest.approx(lr)
    final = m.phases()[-1]
    m.on_epoch_start(final, 18)
    assert m.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)


def test_heldout_counts_and_weights_at_the_final_phase():
    m = make_method("har", labels_from_counts(COUNTS))

    class AlwaysZero(nn.Module):  # predicts class 0 for every image
        def forward(self, x):
            return F.one_hot(torch.zeros(x.shape[0], dtype=torch.int64), 10).float()

    phases = m.phases()
    for fold in (0, 1):
        m.est_models[fold] = AlwaysZero()
        m.on_epoch_end(phases[fold], 28)  # not the last epoch: nothing measured
        assert m.est_total[fold].sum() == 0
        logs = m.on_epoch_end(phases[fold], 29)
        held = m._fold_data(fold)[1]
        expect = np.bincount(m.ctx.train.labels[held].numpy(), minlength=10)
        np.testing.assert_array_equal(m.est_total[fold], expect)
        np.testing.assert_array_equal(m.est_correct[fold], np.eye(10)[0] * expect[0])
        assert logs["heldout_top1_observed"] == pytest.approx(100 * expect[0] / expect.sum())
    m.on_phase_start(phases[2])
    err = np.array([0.0] + [1.0] * 9)  # pooled over both halves: class 0 always right, others always wrong
    np.testing.assert_allclose(m.class_reg.numpy(), har_class_weights(err, COUNTS), rtol=1e-6)
    assert m.class_reg[0] == 0 and m.class_reg.max() == pytest.approx(1.0)
    assert m.class_reg.argmax() in (8, 9)  # the rarest classes get the strongest regulariser


def test_final_step_adds_the_weighted_regulariser():
    m = make_method("har", labels_from_counts([5] * 10), "method.reg_weight=2.0")
    final = m.phases()[-1]
    m.class_reg = torch.linspace(0.1, 1.0, 10)
    m.on_epoch_start(final, 0)
    batch = next(m.ctx.train.batches(16))
    # the same quantities computed outside the method, on a copy of the model
    state = {k: v.clone() for k, v in m.model.state_dict().items()}
    rec = m.recorder
    with rec.record() as outs:
        logits = m.model(batch.x)
    ce = F.cross_entropy(logits, batch.y)
    reg = har_regulariser(ce, outs, rec.gammas(), m.class_reg[batch.y])
    expect = float((ce + 2.0 * reg).detach())
    m.model.load_state_dict(state)  # undo the BN running-stat update of the reference forward
    out = m.train_step(batch, final, 0)
    assert float(out["loss"]) == pytest.approx(expect, rel=1e-5)
    assert len(outs) == 3  # digits_cnn: stage1..3
    assert m.on_epoch_end(final, 0)["regulariser"] == pytest.approx(float(reg.detach()), rel=1e-5)


def test_optional_drw_switches_at_the_first_milestone():
    m = make_method("har", labels_from_counts(COUNTS), "method.drw=true")
    final = m.phases()[-1]
    m.on_epoch_start(final, 17)
    assert torch.equal(m.class_weights, torch.ones(10))
    m.on_epoch_start(final, 18)
    np.testing.assert_allclose(m.class_weights.numpy(), class_balanced_weights(COUNTS, 0.9999), rtol=1e-6)


@pytest.mark.parametrize("change,message", [
    ({"folds": 3}, r"method\.folds must be 1"),
    ({"reg_weight": -1.0}, r"method\.reg_weight must be a number >= 0"),
    ({"est_epochs": 0}, r"method\.est_epochs must be null"),
    ({"beta": 1.0}, r"method\.beta must be a number in \[0, 1\)"),
    ({"drw": "yes"}, r"method\.drw must be true or false"),
])
def test_bad_har_configs(change, message):
    cfg = OmegaConf.create(OmegaConf.to_container(config("method=har"), resolve=True))
    for key, value in change.items():
        cfg.method[key] = value
    with pytest.raises(ConfigError, match=message):  # HARConfig: types and value rules
        validate_config(cfg)


def test_defaults():
    """What the defaults do, checked against the documented values (docs/methods.md §11): lambda = 10
    (the official README's training command, not the argparse default 0.1), two pooled folds (the
    official code runs one), estimation folds as long as the recipe, no DRW."""
    h = config("method=har").method
    assert (h.reg_weight, h.folds, h.est_epochs, h.drw) == (10.0, 2, None, False)
    n = 60
    m = make_method("har", labels_from_counts([12, 9, 8, 7, 6, 5, 4, 3, 3, 3]))  # imbalanced: DRW would show
    recipe = m.ctx.recipe
    # folds: 2 -> two estimation phases, not evaluated, whose held-out halves partition the training set
    phases = m.phases()
    assert [p.name for p in phases] == ["estimate_fold1", "estimate_fold2", "train"]
    assert [p.evaluate for p in phases[:2]] == [False, False] and phases[-1].final
    assert sorted(torch.cat([m.half_a, m.half_b]).tolist()) == list(range(n)) and len(m.half_a) == n // 2
    assert torch.equal(m.train_subset(phases[0]), m.half_a) and torch.equal(m.train_subset(phases[1]), m.half_b)
    # est_epochs: null -> each fold lasts the recipe's epochs, with the recipe's own lr schedule
    assert [p.epochs for p in phases] == [int(recipe.epochs)] * 3
    assert m.est_recipe["milestones"] == list(recipe.milestones)
    # drw: false -> the CE of the final phase stays unweighted after every milestone;
    # reg_weight: 10 -> the loss is CE + 10 * regulariser
    last = int(recipe.milestones[-1])
    m.on_epoch_start(phases[-1], last)
    m.class_reg = torch.linspace(0.1, 1.0, 10)
    spread = torch.arange(0, n, 5)  # many classes in one batch, so class weights would change the CE
    batch = next(iter(m.ctx.train.batches(len(spread), spread, shuffle=False, augment=False)))
    assert len(set(batch.y.tolist())) >= 5
    stepped = []
    m.step = lambda opt, loss: stepped.append(loss)
    m.train_step(batch, phases[-1], last)
    with m.recorder.record() as outputs:
        logits = m.model(batch.x)
    ce = F.cross_entropy(logits, batch.y)  # no class weights
    reg = har_regulariser(ce, outputs, m.recorder.gammas(), m.class_reg[batch.y])
    assert float(reg.detach()) > 0
    drw = torch.as_tensor(class_balanced_weights(m.ctx.class_counts, 0.9999), dtype=torch.float32)
    assert not torch.allclose(F.cross_entropy(logits, batch.y, weight=drw), ce)  # what DRW on would give
    torch.testing.assert_close(stepped[0].detach(), (ce + 10.0 * reg).detach())


# -- resume inside an estimation fold -----------------------------------------------------------
HAR_RUN = ["method=har", "seed=1", "split.imbalance_factor=10", "split.noise_rate=0.4", "recipe.epochs=2",
           "method.est_epochs=2", "train.deterministic=true", "train.limit_batches=3"]


def test_har_resumes_inside_a_fold_to_the_same_result(workdirs, tmp_path, monkeypatch):
    reference, ref = reference_run(HAR_RUN)
    assert [p["name"] for p in reference["phases"]] == ["estimate_fold1", "estimate_fold2", "train"]
    # killed inside fold 2 (after its first epoch), then inside the final phase
    plan2 = resumed_run(HAR_RUN, tmp_path / "again", monkeypatch, (3, 2))
    assert_same_result(plan2.run_dir, reference, ref)
