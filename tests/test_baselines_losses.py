"""Focal, Class-Balanced, LDAM-DRW and DAL: losses, weights and margins against values computed by
hand on tiny tensors, their schedule switches, and their config errors. (HAR: tests/test_har.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from baselines.class_balanced import cb_focal_loss, cb_sigmoid_loss, cb_softmax_loss
from baselines.dal import dal_lambda, dal_loss, dal_q, dal_t0, gce_loss, prediction_entropy
from baselines.focal import softmax_focal_loss
from baselines.ldam_drw import NormedLinear, ldam_loss, ldam_margins
from curvebench.config import compose_config, validate_config
from curvebench.engine.context import CleanLabels
from curvebench.engine.data import Batch
from curvebench.engine.method import METHODS, Phase
from curvebench.engine.reweighting import (
    class_balanced_weights,
    drw_class_weights,
    drw_start_epoch,
    mean_weight_by_noise,
)
from curvebench.errors import ConfigError
from tests.methodhelpers import config, labels_from_counts, make_method

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
# logits [ln 3, 0] -> softmax [3/4, 1/4]; [0, ln 3] -> [1/4, 3/4]
Z = torch.tensor([[LN3, 0.0], [LN3, 0.0]], dtype=torch.float64)
Y = torch.tensor([0, 1])


def close(a, b, tol=1e-9):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


# -- class-balanced weights ---------------------------------------------------------------------
def test_class_balanced_weights_by_hand():
    # beta = 1/2, counts (4, 2, 1): E_n = (1 - beta^n)/(1 - beta) = 15/8, 3/2, 1
    # w = 1/E = 8/15, 2/3, 1 = (8, 10, 15)/15, sum 33/15; times K/sum = 3*15/33 -> (8, 10, 15)/11
    w = class_balanced_weights([4, 2, 1], 0.5)
    np.testing.assert_allclose(w, np.array([8, 10, 15]) / 11, rtol=1e-12)
    assert close(w.sum(), 3)


def test_class_balanced_weights_beta_0_zero_counts_and_default_beta():
    np.testing.assert_allclose(class_balanced_weights([5, 1, 30], 0.0), [1, 1, 1])
    # a class with no observed sample: weight 0, the others still sum to K
    w = class_balanced_weights([4, 0, 1], 0.5)  # present: 8/15, 1 -> sum 23/15 -> x 3*15/23
    np.testing.assert_allclose(w, [24 / 23, 0.0, 45 / 23], rtol=1e-12)
    # beta = 0.9999, counts (5000, 50): w ~ 1/E_n, E_5000 = (1 - 0.9999^5000)/1e-4
    e = [(1 - 0.9999 ** n) / 1e-4 for n in (5000, 50)]
    raw = np.array([1 / e[0], 1 / e[1]])
    np.testing.assert_allclose(class_balanced_weights([5000, 50], 0.9999), raw * 2 / raw.sum(), rtol=1e-9)


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5, "x"])
def test_class_balanced_weights_reject_bad_beta(beta):
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        class_balanced_weights([3, 1], beta)


def test_drw_weights_switch_exactly_at_the_start_epoch():
    counts = [4, 2, 1]
    for epoch in (0, 17):
        np.testing.assert_array_equal(drw_class_weights(counts, epoch, 18, 0.5), [1, 1, 1])
    for epoch in (18, 29):
        np.testing.assert_allclose(drw_class_weights(counts, epoch, 18, 0.5), np.array([8, 10, 15]) / 11)
    assert drw_start_epoch({"milestones": [80, 100]}) == 80
    assert drw_start_epoch({"milestones": [80, 100]}, 7) == 7
    with pytest.raises(ConfigError, match="milestones"):
        drw_start_epoch({"milestones": []})


# -- diagnostics: mean weight of clean and of noisy samples -------------------------------------
def test_mean_weight_by_noise_leaves_out_unknown_clean_labels():
    observed = torch.tensor([0, 1, 1, 0, 1, 0])
    clean_labels = torch.tensor([0, 0, -1, 0, -1, 1])  # -1: clean label unknown (samples 2 and 4)
    clean = CleanLabels(clean_labels, (clean_labels >= 0) & (clean_labels != observed))
    w = torch.tensor([0.8, 0.2, 100.0, 0.6, 100.0, 0.4])
    # clean: samples 0, 3 -> (0.8 + 0.6) / 2 = 0.7; noisy: samples 1, 5 -> (0.2 + 0.4) / 2 = 0.3
    d = mean_weight_by_noise(w, clean)
    assert d == {"mean_weight_clean": pytest.approx(0.7), "mean_weight_noisy": pytest.approx(0.3)}
    # not yet weighted (seen False): sample 5 drops out of the noisy mean, sample 0 out of the clean one
    seen = torch.tensor([False, True, True, True, True, False])
    d = mean_weight_by_noise(w, clean, seen)
    assert d == {"mean_weight_clean": pytest.approx(0.6), "mean_weight_noisy": pytest.approx(0.2)}
    # every clean label unknown: neither group has a member, so neither key is there
    unknown = CleanLabels(torch.full((6,), -1), torch.zeros(6, dtype=torch.bool))
    assert mean_weight_by_noise(w, unknown) == {}


# -- focal --------------------------------------------------------------------------------------
def test_softmax_focal_loss_by_hand():
    # sample 0: p = 3/4, CE = ln(4/3); sample 1: p = 1/4, CE = ln 4
    ce0, ce1 = math.log(4 / 3), LN4
    assert close(softmax_focal_loss(Z, Y, 1.0), (0.25 * ce0 + 0.75 * ce1) / 2)
    assert close(softmax_focal_loss(Z, Y, 2.0), (0.25 ** 2 * ce0 + 0.75 ** 2 * ce1) / 2)
    assert close(softmax_focal_loss(Z, Y, 0.0), (ce0 + ce1) / 2)  # gamma 0 = CE
    # class weights (2, 1): CE_0 = 2 ln(4/3), "p" = exp(-CE_0) = 9/16 (the LDAM code's quirk); batch mean
    w = torch.tensor([2.0, 1.0], dtype=torch.float64)
    assert close(softmax_focal_loss(Z, Y, 1.0, w), ((7 / 16) * 2 * ce0 + 0.75 * ce1) / 2)


class FixedLogits(torch.nn.Module):
    """A stand-in network whose output is a learnable copy of fixed logits, whatever its input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.z = torch.nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z


def test_focal_method_uses_gamma():
    m = make_method("focal", labels_from_counts([3] * 10), "method.gamma=2")
    assert m.cfg.gamma == 2
    # The method's own train_step: the loss it optimises changes with gamma exactly as
    # FL = -(1 - p)^gamma log p says. Logits Z, labels Y: p = 3/4 for sample 0, 1/4 for sample 1.
    lp0, lp1 = math.log(3 / 4), math.log(1 / 4)
    by_hand = {g: (-((1 - 0.75) ** g) * lp0 - ((1 - 0.25) ** g) * lp1) / 2 for g in (0, 1, 2)}
    ln43 = math.log(4 / 3)
    assert close(by_hand[2], (ln43 / 16 + 9 * LN4 / 16) / 2) and close(by_hand[0], (ln43 + LN4) / 2)
    batch = Batch(x=torch.zeros(2, 1, 8, 8), y=Y, index=torch.arange(2))
    for gamma in (0, 1, 2):
        m = make_method("focal", labels_from_counts([3] * 10), f"method.gamma={gamma}")
        m.model = FixedLogits(Z)
        m.optimizer = torch.optim.SGD(m.model.parameters(), lr=0.1)
        stepped = []
        m.step = lambda opt, loss: stepped.append(loss)  # the loss handed to the optimiser step
        out = m.train_step(batch, Phase("train", 1, 2, final=True), 0)
        (loss,) = stepped
        assert close(loss.detach(), by_hand[gamma]) and close(out["loss"], by_hand[gamma]), gamma
        # and its gradient is that of the formula (autograd through the hand-written expression)
        (grad,) = torch.autograd.grad(loss, m.model.z)
        z = Z.clone().requires_grad_(True)
        p = torch.softmax(z, 1)[torch.arange(2), Y]
        (want,) = torch.autograd.grad((-(1 - p) ** gamma * torch.log(p)).mean(), z)
        torch.testing.assert_close(grad, want)
    assert by_hand[0] > by_hand[1] > by_hand[2]  # a larger gamma down-weights the easy sample more


# -- class-balanced loss ------------------------------------------------------------------------
def test_cb_softmax_is_the_weighted_mean_of_ce():
    w = torch.tensor([2.0, 1.0], dtype=torch.float64)
    # (w_0 CE_0 + w_1 CE_1) / (w_0 + w_1), torch's CrossEntropyLoss(weight=w)
    assert close(cb_softmax_loss(Z, Y, w), (2 * math.log(4 / 3) + LN4) / 3)


def test_cb_sigmoid_and_focal_by_hand():
    z = torch.tensor([[0.0, LN3]], dtype=torch.float64)  # sigmoid: 1/2, 3/4
    y = torch.tensor([0])
    w = torch.tensor([2.0, 1.0], dtype=torch.float64)
    # BCE: positive class 0: -ln(1/2) = ln 2; negative class 1: -ln(1 - 3/4) = ln 4; sum 3 ln 2
    # times w_{y} = 2, divided by the number of positives (1)
    assert close(cb_sigmoid_loss(z, y, w), 2 * 3 * LN2)
    # focal: (1 - p_t)^gamma with p_t = 1/2 (positive), 1 - 3/4 = 1/4 (negative)
    # gamma 1: 1/2 ln 2 + 3/4 ln 4 = 2 ln 2 -> times 2
    assert close(cb_focal_loss(z, y, w, 1.0), 2 * 2 * LN2)
    # gamma 2: 1/4 ln 2 + 9/16 * 2 ln 2 = 11/8 ln 2 -> times 2
    assert close(cb_focal_loss(z, y, w, 2.0), 2 * 11 / 8 * LN2)
    assert close(cb_focal_loss(z, y, w, 0.0), cb_sigmoid_loss(z, y, w))
    # a batch of two: the sum over samples divided by B = 2
    z2, y2 = torch.cat([z, z]), torch.tensor([0, 1])
    # sample 1 (label 1): positive class 1 (z = ln 3): -ln(3/4); negative class 0 (z = 0): ln 2; w_1 = 1
    s1 = math.log(4 / 3) + LN2
    assert close(cb_sigmoid_loss(z2, y2, w), (6 * LN2 + s1) / 2)


def test_cb_method_weights_loss_type_and_sigmoid_head():
    counts = [40, 20, 10, 5, 5, 5, 5, 5, 5, 2]
    m = make_method("cb", labels_from_counts(counts), "method.beta=0.9")
    np.testing.assert_allclose(m.class_weights.numpy(), class_balanced_weights(counts, 0.9), rtol=1e-6)
    assert len(m.optimizer.param_groups) == 1
    m = make_method("cb", labels_from_counts(counts), "method.loss_type=focal", "method.gamma=2")
    # bias = -log(K - 1) (prior 1/K), and no weight decay on it
    np.testing.assert_allclose(m.model.linear.bias.detach().numpy(), -math.log(9), rtol=1e-6)
    assert m.optimizer.param_groups[1]["params"][0] is m.model.linear.bias
    assert m.optimizer.param_groups[1]["weight_decay"] == 0
    assert m.optimizer.param_groups[0]["weight_decay"] == m.ctx.recipe.weight_decay
    z, y = torch.randn(3, 10), torch.tensor([0, 9, 3])
    assert torch.allclose(m.loss(z, y), cb_focal_loss(z, y, m.class_weights, 2.0))


# -- LDAM-DRW -----------------------------------------------------------------------------------
def test_ldam_margins_by_hand():
    # n^(-1/4): 81 -> 1/3, 16 -> 1/2, 1 -> 1; scaled so that the largest is 0.5
    np.testing.assert_allclose(ldam_margins([81, 16, 1], 0.5), [1 / 6, 1 / 4, 1 / 2], rtol=1e-12)
    np.testing.assert_allclose(ldam_margins([16, 16], 0.3), [0.3, 0.3])
    np.testing.assert_allclose(ldam_margins([16, 0, 1], 0.5), [0.25, 0.5, 0.5])  # empty class: max_m


def test_ldam_loss_by_hand():
    z = torch.tensor([[0.5, 0.2], [0.5, 0.2]], dtype=torch.float64)  # cosine logits
    m = torch.tensor([0.25, 0.5], dtype=torch.float64)
    # sample 0 (y=0): 30 * [0.5 - 0.25, 0.2] = [7.5, 6] -> CE = ln(1 + e^-1.5)
    # sample 1 (y=1): 30 * [0.5, 0.2 - 0.5] = [15, -9] -> CE = ln(1 + e^24)
    a, b = math.log1p(math.exp(-1.5)), 24 + math.log1p(math.exp(-24))
    assert close(ldam_loss(z, Y, m, 30.0), (a + b) / 2)
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)  # DRW: torch's weighted mean
    assert close(ldam_loss(z, Y, m, 30.0, w), (a + 3 * b) / 4)


def test_normed_linear_is_a_cosine_without_bias():
    head = NormedLinear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    out = head(torch.tensor([[3.0, 4.0]]))  # x/|x| = (0.6, 0.8); rows normalised: e1, e2
    assert torch.allclose(out, torch.tensor([[0.6, 0.8]]))
    assert not any(n == "bias" for n, _ in head.named_parameters())
    assert torch.allclose(NormedLinear(5, 3).weight.norm(dim=1), torch.ones(3))


def test_ldam_drw_method_head_margins_and_drw_switch_at_first_milestone():
    counts = [81, 16, 16, 16, 16, 16, 16, 16, 16, 1]
    m = make_method("ldam_drw", labels_from_counts(counts))
    assert isinstance(m.model.linear, NormedLinear)  # the model's own head: evaluation uses it
    assert any(p is m.model.linear.weight for g in m.optimizer.param_groups for p in g["params"])
    out = m.model(torch.randn(4, 1, 8, 8))
    assert out.abs().max() <= 1 + 1e-6  # cosines
    np.testing.assert_allclose(m.margins.numpy(), ldam_margins(counts, 0.5), rtol=1e-6)
    assert m.margins.max() == pytest.approx(0.5) and m.margins[9] == pytest.approx(0.5)
    assert m.ctx.recipe.milestones[0] == 18 and m.drw_epoch == 18
    phase = Phase("train", 30, 64, final=True)
    cb = class_balanced_weights(counts, 0.9999)
    for epoch, expect in ((0, np.ones(10)), (17, np.ones(10)), (18, cb), (29, cb)):
        m.on_epoch_start(phase, epoch)
        np.testing.assert_allclose(m.class_weights.numpy(), expect, rtol=1e-6)
    m = make_method("ldam_drw", labels_from_counts(counts), "method.drw_epoch=3")
    m.on_epoch_start(phase, 2)
    assert torch.equal(m.class_weights, torch.ones(10))
    m.on_epoch_start(phase, 3)
    np.testing.assert_allclose(m.class_weights.numpy(), cb, rtol=1e-6)
    m = make_method("ldam_drw", labels_from_counts(counts), "method.drw=false")
    m.on_epoch_start(phase, 29)
    assert torch.equal(m.class_weights, torch.ones(10))


def test_ldam_drw_train_step_runs_and_updates_the_cosine_head():
    m = make_method("ldam_drw", labels_from_counts([8] * 10))
    phase = Phase("train", 30, 16, final=True)
    m.on_epoch_start(phase, 20)
    before = m.model.linear.weight.detach().clone()
    batch = next(m.ctx.train.batches(16))
    out = m.train_step(batch, phase, 20)
    assert torch.isfinite(out["loss"]) and not torch.equal(before, m.model.linear.weight)


# -- DAL ----------------------------------------------------------------------------------------
def test_dal_schedule_official_length():
    e, qs, qe = 150, 0.6, 1.5
    t0 = 0.4 * 150 / 0.9  # = 66.67: q(t0) = 1
    assert dal_t0(e, qs, qe) == pytest.approx(t0)
    assert dal_q(0, e, qs, qe) == pytest.approx(0.6)
    assert dal_q(75, e, qs, qe) == pytest.approx(0.6 + 0.9 * 75 / 150)  # 1.05
    assert dal_q(149, e, qs, qe) == pytest.approx(0.6 + 0.9 * 149 / 150)  # 1.494, never q_e
    for i in (0, 30, 66):
        assert dal_lambda(i, e, qs, qe) == 0.0
    assert dal_lambda(67, e, qs, qe) == pytest.approx((67 - t0) / (150 - t0))  # 0.004
    assert dal_lambda(100, e, qs, qe) == pytest.approx((100 - t0) / (150 - t0))  # 0.4
    assert dal_lambda(149, e, qs, qe) == pytest.approx((149 - t0) / (150 - t0))  # 0.988


def test_dal_method_follows_the_recipe_length():
    m = make_method("dal", labels_from_counts([3] * 10))  # digits recipe: E = 30
    phase = Phase("train", 30, 64, final=True)
    t0 = 0.4 * 30 / 0.9  # 13.33
    for epoch, q, lam in ((0, 0.6, 0.0), (13, 0.6 + 0.9 * 13 / 30, 0.0),
                          (14, 0.6 + 0.9 * 14 / 30, (14 - t0) / (30 - t0)),
                          (29, 0.6 + 0.9 * 29 / 30, (29 - t0) / (30 - t0))):
        m.on_epoch_start(phase, epoch)
        assert m.q == pytest.approx(q) and m.lam == pytest.approx(lam)
        assert m.on_epoch_end(phase, epoch) == {"q": pytest.approx(q), "lambda": pytest.approx(lam)}
    assert dal_q(13, 30, 0.6, 1.5) < 1 < dal_q(14, 30, 0.6, 1.5)  # lambda switches on as q passes 1


def test_dal_losses_by_hand():
    z, y = Z[:1], Y[:1]  # p = (3/4, 1/4), label 0
    assert close(gce_loss(z, y, 0.5), (1 - math.sqrt(0.75)) / 0.5)  # = 2 - sqrt(3)
    assert close(gce_loss(z, y, 1.0), 0.25)  # q = 1: MAE-like, 1 - p_y
    h = -(0.75 * math.log(0.75 + 1e-6) + 0.25 * math.log(0.25 + 1e-6))
    assert close(prediction_entropy(z), h)
    assert close(dal_loss(z, y, 1.2, 0.3), (1 - 0.75 ** 1.2) / 1.2 + 0.3 * h / (1.2 * LN2))
    assert close(dal_loss(z, y, 0.8, 0.0), (1 - 0.75 ** 0.8) / 0.8)
    # p_y below 1e-6 is clamped: (1 - (1e-6)^q) / q
    far = torch.tensor([[0.0, 100.0]], dtype=torch.float64)
    assert close(gce_loss(far, y, 0.6), (1 - 1e-6 ** 0.6) / 0.6)


# -- configuration errors -----------------------------------------------------------------------
BAD = [
    ("focal", {"gamma": -1.0}, r"method\.gamma must be a number >= 0"),
    ("cb", {"beta": 1.0}, r"method\.beta must be a number in \[0, 1\)"),
    ("cb", {"beta": -0.5}, r"method\.beta must be a number in \[0, 1\)"),
    ("cb", {"loss_type": "hinge"}, r"method\.loss_type must be one of softmax, sigmoid, focal"),
    ("cb", {"gamma": -0.5}, r"method\.gamma must be a number >= 0"),
    ("ldam_drw", {"beta": 1.2}, r"method\.beta"),
    ("ldam_drw", {"max_m": 0.0}, r"method\.max_m must be a number > 0"),
    ("ldam_drw", {"s": -30}, r"method\.s must be a number > 0"),
    ("ldam_drw", {"drw_epoch": -1}, r"method\.drw_epoch must be null"),
    ("dal", {"q_end": 0.9}, r"method\.q_end must be > 1"),
    ("dal", {"q_start": 1.6}, r"method\.q_start \(1\.6\) must be below method\.q_end"),
    ("dal", {"q_start": 0.0}, r"method\.q_start must be a number > 0"),
]


@pytest.mark.parametrize("method,change,message", BAD)
def test_bad_configs_raise_config_error(method, change, message):
    cfg = OmegaConf.create(OmegaConf.to_container(config(f"method={method}"), resolve=True))
    for key, value in change.items():
        cfg.method[key] = value
    with pytest.raises(ConfigError, match=message):  # the method's config class (value rules)
        validate_config(cfg)


def test_drw_without_milestones_is_a_config_error():
    cfg = OmegaConf.create(OmegaConf.to_container(config("method=ldam_drw"), resolve=True))
    cfg.recipe.milestones = []
    with pytest.raises(ConfigError, match="recipe.milestones is empty"):
        METHODS.get("ldam_drw").check_config(cfg)
    cfg.method.drw_epoch = 5
    METHODS.get("ldam_drw").check_config(cfg)


def test_bad_override_fails_when_the_config_is_composed():
    with pytest.raises(ConfigError, match=r"method\.beta must be a number in \[0, 1\)"):
        compose_config(["experiment=digits", "method=cb", "method.beta=1.0"])


def test_default_configs_are_valid_and_documented():
    for name in ("focal", "cb", "ldam_drw", "dal"):
        cfg = config(f"method={name}")
        assert cfg.method.name == name
    assert config("method=cb").method.beta == 0.9999 and config("method=cb").method.loss_type == "softmax"
    assert config("method=focal").method.gamma == 1.0
    ld = config("method=ldam_drw").method
    assert (ld.max_m, ld.s, ld.drw, ld.drw_epoch, ld.beta) == (0.5, 30, True, None, 0.9999)
    assert (config("method=dal").method.q_start, config("method=dal").method.q_end) == (0.6, 1.5)
