"""The shared functional virtual step: exactness, BN isolation, SLMO and finite differences."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.engine.virtual import FunctionalModel, SGDRule, meta_backward, momentum_buffers, slmo_frozen
from curvebench.errors import ConfigError
from curvebench.models import build_model
from tests.helpers import finite_difference_grad


class Tiny(nn.Module):
    slmo_groups = (("stem",), ("stage1",), ("stage2",))

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(self.stage2(self.stage1(self.stem(x))).mean((2, 3)))


class WeightNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(1, 5), nn.Linear(5, 1)

    def forward(self, loss):
        return torch.sigmoid(self.l2(torch.tanh(self.l1(loss[:, None])))).squeeze(1)


def _meta_loss(model, wnet, x, y, xm, ym, rule, bufs, frozen=()):
    fm = FunctionalModel(model, frozen)
    params = fm.params()
    losses = F.cross_entropy(fm(x, params), y, reduction="none")
    w = wnet(losses.detach())
    new = fm.virtual_step((w * losses).mean(), params, rule, bufs)
    return F.cross_entropy(fm(xm, new), ym)


@pytest.mark.parametrize("rule", [SGDRule(0.5), SGDRule(0.3, momentum=0.9, nesterov=True, weight_decay=5e-4)])
def test_meta_gradient_matches_finite_differences(rule):
    torch.manual_seed(0)
    model, wnet = Tiny().double(), WeightNet().double()
    x, y = torch.randn(6, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    xm, ym = torch.randn(5, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (5,))
    bufs = {n: torch.randn_like(p) * 0.1 for n, p in model.named_parameters()} if rule.momentum else {}
    meta_backward(_meta_loss(model, wnet, x, y, xm, ym, rule, bufs), wnet.parameters())
    analytic = torch.cat([p.grad.flatten() for p in wnet.parameters()])
    # perturbed outside no_grad: the virtual step needs autograd
    numeric = finite_difference_grad(lambda: _meta_loss(model, wnet, x, y, xm, ym, rule, bufs),
                                     list(wnet.parameters()), eps=1e-6)
    assert analytic.abs().max() > 1e-6, "the meta-gradient must not vanish"
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_virtual_step_equals_the_real_optimizer_step():
    torch.manual_seed(1)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x, y = torch.randn(8, 1, 5, 5), torch.randint(0, 3, (8,))
    for _ in range(2):  # the second step uses the momentum buffers of the first
        fm = FunctionalModel(model)
        params = fm.params()
        new = fm.virtual_step(F.cross_entropy(fm(x, params), y), params, SGDRule.from_optimizer(opt),
                              momentum_buffers(opt, model), create_graph=False)
        real = copy.deepcopy(model)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(new[name], p, rtol=1e-5, atol=1e-6)
        del real


def test_functional_forwards_leave_real_batchnorm_statistics_alone():
    torch.manual_seed(2)
    model = Tiny()
    before = {n: b.clone() for n, b in model.named_buffers()}
    fm = FunctionalModel(model)
    params = fm.params()
    new = fm.virtual_step(F.cross_entropy(fm(torch.randn(4, 1, 5, 5), params), torch.tensor([0, 1, 2, 0])),
                          params, SGDRule(0.1))
    fm(torch.randn(4, 1, 5, 5), new).sum().backward()
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), f"buffer {n} changed"
    assert all(p.grad is None for p in model.parameters()), "the real model's .grad must stay untouched"


def test_slmo_frozen_layers_get_no_gradient_and_no_update():
    torch.manual_seed(3)
    model = build_model("resnet8", 10)
    frozen = slmo_frozen(model, 3)
    assert frozen == ("conv1", "bn1", "layer1", "layer2")
    fm = FunctionalModel(model, frozen)
    params = fm.params()
    assert all(not params[n].requires_grad for n in params if n.startswith(("conv1", "bn1", "layer1", "layer2")))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    scale = torch.ones(4, requires_grad=True)
    losses = F.cross_entropy(fm(x, params), y, reduction="none")
    new = fm.virtual_step((scale * losses).mean(), params, SGDRule(0.1))
    for n in params:
        if n.startswith(("conv1", "bn1", "layer1", "layer2")):
            assert new[n] is params[n], f"{n} was updated"
        else:
            assert new[n].requires_grad
    (g,) = torch.autograd.grad(F.cross_entropy(fm(x, new), y), scale)
    assert g.abs().sum() > 0
    # frozen BatchNorm layers ran in eval mode, and were put back in train mode afterwards
    assert model.bn1.training and model.layer1[0].bn1.training


def test_slmo_range_is_checked():
    model = build_model("resnet8", 10)
    assert slmo_frozen(model, 0) == ()
    with pytest.raises(ConfigError, match="SL=4 is out of range.*0..3"):
        slmo_frozen(model, 4)
