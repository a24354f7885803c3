"""A generic meta-reweighting step built from ``engine/virtual.py``, split into its phases.

Until the CurveNet method (which marks these phases itself through ``ctx.mark_phase``) is
registered, ``curvebench perf`` times this faithful stand-in: CurveNet's allocating step
(docs/methods.md §2.5) with a CurveNet-shaped weighting network (§2.4) and SLMO (§2.6):

1. ``virtual``: per-sample CE of the functional classifier, weights w = G(curve, label), one
   differentiable step of the *real* optimiser's rule (momentum from its buffers, Nesterov, weight
   decay, current lr) over the layers SLMO leaves in the meta path;
2. ``meta_forward``: CE of the looked-ahead classifier on a clean meta batch;
3. ``meta_backward``: second-order backward into the weighting net only, then its Adam step;
4. ``real``: weights recomputed without grad, weighted CE, SGD step of the real classifier.

The meta batch is drawn first (phase ``meta_batch``: augmentation only).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.engine.context import TrainContext
from curvebench.engine.data import Batch
from curvebench.engine.virtual import FunctionalModel, SGDRule, meta_backward, momentum_buffers, slmo_frozen

Marker = Callable[[str], None]
META_PHASES = ("virtual", "meta_forward", "meta_backward", "real")


def _noop(name: str) -> None:
    pass


class CurveWeightNet(nn.Module):
    """CurveNet's weighting network (docs/methods.md §2.4): curve encoder 294-128-128-64, twice the class
    embedding, head 64-128-64-1, w = sigmoid(z) + 0.02. (Initialisation does not matter for timing.)"""

    def __init__(self, num_classes: int, curve_dim: int = 294, hidden: int = 64) -> None:
        super().__init__()
        p = hidden
        self.encoder = nn.Sequential(nn.Linear(curve_dim, 2 * p), nn.ReLU(), nn.Linear(2 * p, 2 * p), nn.ReLU(),
                                     nn.Linear(2 * p, p))
        self.embedding = nn.Embedding(num_classes, p)
        self.head = nn.Sequential(nn.Linear(p, 2 * p), nn.ReLU(), nn.Linear(2 * p, p), nn.ReLU(), nn.Linear(p, 1))

    def forward(self, curves: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.encoder(curves)) + 2 * self.embedding(labels)
        return torch.sigmoid(self.head(h)).squeeze(1) + 0.02


class MetaStep:
    """The four phases on given tensors (any device, ``meta`` included, for FLOP counting)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, sl: int, wnet: nn.Module,
                 woptimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer, self.sl, self.wnet, self.woptimizer = model, optimizer, sl, wnet, woptimizer
        self.fm = FunctionalModel(model, slmo_frozen(model, sl))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, curves: torch.Tensor, xm: torch.Tensor, ym: torch.Tensor,
                 mark: Marker = _noop) -> torch.Tensor:
        fm = self.fm
        mark("virtual")
        params = fm.params()
        losses = F.cross_entropy(fm(x, params), y, reduction="none")
        w = self.wnet(curves, y)
        new = fm.virtual_step((w * losses).mean(), params, SGDRule.from_optimizer(self.optimizer),
                              momentum_buffers(self.optimizer, self.model))

        mark("meta_forward")
        meta_loss = F.cross_entropy(fm(xm, new), ym)

        mark("meta_backward")
        self.woptimizer.zero_grad(set_to_none=True)
        meta_backward(meta_loss, self.wnet.parameters())
        self.woptimizer.step()

        mark("real")
        with torch.no_grad():
            w = self.wnet(curves, y)
        loss = (w * F.cross_entropy(self.model(x), y, reduction="none")).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The engine's CE step (``Method.train_step``) on given tensors."""
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def weight_net_and_optimizer(num_classes: int, device: torch.device | str, curve_dim: int = 294
                             ) -> tuple[CurveWeightNet, torch.optim.Optimizer]:
    """CurveNet's weighting net and its optimiser (Adam, lr 1e-3, weight decay 1e-4)."""
    wnet = CurveWeightNet(num_classes, curve_dim).to(device)
    return wnet, torch.optim.Adam(wnet.parameters(), lr=1e-3, weight_decay=1e-4)


class GenericMetaStep:
    """CurveNet's allocating-stage step at SLMO level ``sl`` on the classifier of ``ctx``."""

    def __init__(self, ctx: TrainContext, sl: int, epoch: int = 0, curve_dim: int = 294) -> None:
        self.ctx = ctx
        model = ctx.build_model()
        optimizer = ctx.build_optimizer(model.parameters())
        ctx.set_lr(optimizer, ctx.recipe_lr(epoch))
        wnet, wopt = weight_net_and_optimizer(ctx.num_classes, ctx.device, curve_dim)
        self.core = MetaStep(model, optimizer, sl, wnet, wopt)
        g = torch.Generator(device=ctx.device).manual_seed(sl)
        self.curves = torch.randn(len(ctx.train), curve_dim, device=ctx.device, generator=g)

    def __call__(self, batch: Batch, mark: Marker = _noop) -> torch.Tensor:
        mark("meta_batch")
        assert self.ctx.meta is not None
        meta = self.ctx.meta.next_batch(len(batch))
        return self.core(batch.x, batch.y, self.curves[batch.index], meta.x, meta.y, mark)
