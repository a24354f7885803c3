"""MW-Net's step two ways, to show what the functional virtual step gains (PERFORMANCE.md §9.1).

``ReferenceMWNetStep`` is written from the description of the official MW-Net.py (docs/methods.md §9,
PERFORMANCE.md §9.1), not from its code: every iteration it makes a **fresh copy of the network**
(``copy.deepcopy`` of a template, then ``load_state_dict`` of the classifier), computes the
weighted loss on the copy, takes the gradients with ``create_graph=True``, replaces the copy's
parameters by ``p - lr * g`` (the "MetaModule" parameter surgery), runs the copy on the clean
batch and calls ``backward()`` on the meta loss (which also fills the copy's own ``.grad``, as the
official code does), then does the real step on the original network.

``FunctionalMWNetStep`` is the same algorithm with ``engine/virtual.py``: no copy, no surgery,
cloned BatchNorm buffers, and a meta backward that computes the weighting net's gradients only.

Both: V-Net Linear(1,100)-ReLU-Linear(100,1)-sigmoid on the detached per-sample CE, unnormalised
weights, plain-SGD virtual step at the classifier's current lr, Adam(1e-3, wd 1e-4) on the V-Net,
real SGD step with the classifier's optimiser. For the same state and batches they produce the same
update (tests/test_perf_bench.py checks it in float64).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.engine.virtual import FunctionalModel, SGDRule, meta_backward

Marker = Callable[[str], None]


def _noop(name: str) -> None:
    pass


class VNet(nn.Module):
    """MW-Net's weighting network: Linear(1, 100) -> ReLU -> Linear(100, 1) -> sigmoid."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(1, hidden), nn.Linear(hidden, 1)

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.l2(F.relu(self.l1(loss[:, None])))).squeeze(1)


class _MWNetBase:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, vnet: nn.Module,
                 voptimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer, self.vnet, self.voptimizer = model, optimizer, vnet, voptimizer

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def real_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cost = F.cross_entropy(self.model(x), y, reduction="none")
        with torch.no_grad():
            w = self.vnet(cost.detach())
        loss = (w * cost).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class FunctionalMWNetStep(_MWNetBase):
    """MW-Net's step through ``FunctionalModel`` (ours)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.fm = FunctionalModel(self.model)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, xm: torch.Tensor, ym: torch.Tensor,
                 mark: Marker = _noop) -> torch.Tensor:
        mark("virtual")
        params = self.fm.params()
        cost = F.cross_entropy(self.fm(x, params), y, reduction="none")
        w = self.vnet(cost.detach())
        new = self.fm.virtual_step((w * cost).mean(), params, SGDRule(self.lr))
        mark("meta_forward")
        meta_loss = F.cross_entropy(self.fm(xm, new), ym)
        mark("meta_backward")
        self.voptimizer.zero_grad(set_to_none=True)
        meta_backward(meta_loss, self.vnet.parameters())
        self.voptimizer.step()
        mark("real")
        return self.real_step(x, y)


def _replace_parameters(module: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Swap named parameters for plain (non-leaf) tensors, as MW-Net's MetaModule.update_params."""
    for name, value in values.items():
        *path, leaf = name.split(".")
        owner = module.get_submodule(".".join(path)) if path else module
        owner._parameters.pop(leaf, None)
        setattr(owner, leaf, value)


class ReferenceMWNetStep(_MWNetBase):
    """MW-Net's step as the official code does it: a fresh network copy every iteration."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.template = copy.deepcopy(self.model)  # stands for "build a new ResNet" each iteration

    def __call__(self, x: torch.Tensor, y: torch.Tensor, xm: torch.Tensor, ym: torch.Tensor,
                 mark: Marker = _noop) -> torch.Tensor:
        mark("virtual")
        meta_model = copy.deepcopy(self.template)
        meta_model.load_state_dict(self.model.state_dict())
        meta_model.train()
        cost = F.cross_entropy(meta_model(x), y, reduction="none")
        w = self.vnet(cost.detach())
        loss = (w * cost).mean()
        names, params = zip(*meta_model.named_parameters())
        grads = torch.autograd.grad(loss, params, create_graph=True)
        _replace_parameters(meta_model, {n: p - self.lr * g for n, p, g in zip(names, params, grads)})
        mark("meta_forward")
        meta_loss = F.cross_entropy(meta_model(xm), ym)
        mark("meta_backward")
        self.voptimizer.zero_grad(set_to_none=True)
        meta_loss.backward()  # also fills the copy's leaf .grad, as the official code does
        self.voptimizer.step()
        mark("real")
        return self.real_step(x, y)


def mwnet_pair(build: Callable[[], nn.Module], optimizer: Callable[[nn.Module], torch.optim.Optimizer],
               device: torch.device, seed: int = 0) -> tuple[FunctionalMWNetStep, ReferenceMWNetStep]:
    """Two MW-Net steps (ours, reference) from identical initial states."""
    steps = []
    for cls in (FunctionalMWNetStep, ReferenceMWNetStep):
        torch.manual_seed(seed)
        model = build()
        vnet = VNet().to(device)
        vopt = torch.optim.Adam(vnet.parameters(), lr=1e-3, weight_decay=1e-4)
        steps.append(cls(model, optimizer(model), vnet, vopt))
    return steps[0], steps[1]  # type: ignore[return-value]
