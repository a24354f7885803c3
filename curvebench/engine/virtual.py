"""The one functional virtual step shared by MW-Net, CurveNet and Dynamic Loss.

A meta-reweighting step looks one SGD step ahead: theta' = theta - lr * d(weighted loss)/d theta,
keeping the graph so that a clean meta loss at theta' can be differentiated back into the
weighting network. We do it with ``torch.func.functional_call`` on the unmodified model:

- no model copy per step (the official MW-Net rebuilds the network every iteration);
- BatchNorm buffers are cloned for every functional forward, so virtual and meta forwards never
  change the real model's running statistics (``higher`` clones them too);
- SLMO: the module groups named in ``frozen`` enter as constants (no gradient, no update, no
  second-order path) and their BatchNorm layers run in eval mode, as CurveNet's ``froze()`` does;
- the functional passes run eagerly and in fp32 even when ``train.compile``, ``train.cuda_graphs``
  or ``train.bf16`` is on (``engine/fastpath.py``): compiled graphs cannot be differentiated twice;
  TF32 is off in them (``no_tf32``: the functional forwards, the virtual step's gradient and the meta
  backward), whatever ``train.tf32`` says, so "fp32" holds on Ampere+ GPUs too;
- the update rule is the real optimiser's (momentum and Nesterov from its current momentum
  buffers, weight decay, current lr; CurveNet via ``higher``) or plain SGD (MW-Net).

Typical use::

    fm = FunctionalModel(model, frozen=slmo_frozen(model, sl))
    params = fm.params()
    w = weight_net(...)                                       # depends on the meta parameters
    loss = (w * F.cross_entropy(fm(x, params), y, reduction="none")).mean()
    new_params = fm.virtual_step(loss, params, SGDRule.from_optimizer(opt), momentum_buffers(opt, model))
    meta_loss = F.cross_entropy(fm(x_meta, new_params), y_meta)
    meta_backward(meta_loss, weight_net.parameters())          # fills .grad of the weight net only
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

from curvebench.engine.fastpath import eager_fp32, no_tf32
from curvebench.errors import ConfigError


@dataclass(frozen=True)
class SGDRule:
    """torch.optim.SGD's update, written out so that it can be differentiated."""

    lr: float | torch.Tensor
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    dampening: float = 0.0

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.Optimizer) -> "SGDRule":
        if len(optimizer.param_groups) != 1:
            raise ValueError("SGDRule.from_optimizer expects a single parameter group")
        g = optimizer.param_groups[0]
        return cls(g["lr"], g.get("momentum", 0.0), g.get("nesterov", False), g.get("weight_decay", 0.0),
                   g.get("dampening", 0.0))


def momentum_buffers(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, torch.Tensor]:
    """The real optimiser's momentum buffers keyed by parameter name (empty before its first step)."""
    out = {}
    for name, p in model.named_parameters():
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf
    return out


def slmo_frozen(model: nn.Module, sl: int) -> tuple[str, ...]:
    """Module names SLMO takes out of the meta path: SL=0 none, SL=1 the stem, SL=s the stem and
    the first s-1 residual stages."""
    groups = getattr(model, "slmo_groups", None)
    if groups is None:
        raise ConfigError(f"{type(model).__name__} does not declare slmo_groups; SLMO needs them")
    stages = len(groups) - 1
    if not 0 <= sl <= stages:
        raise ConfigError(
            f"SL={sl} is out of range for {type(model).__name__}, which has {stages} residual stages "
            f"after the stem: choose SL in 0..{stages}"
        )
    return tuple(name for group in groups[:sl] for name in group)


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class FunctionalModel:
    """Functional forwards of ``model`` with substituted parameters and cloned buffers."""

    def __init__(self, model: nn.Module, frozen: Sequence[str] = ()) -> None:
        self.model = model
        self.frozen = tuple(frozen)
        self.trainable = [n for n, p in model.named_parameters() if p.requires_grad and not _under(n, self.frozen)]
        self._frozen_modules = [m for n, m in model.named_modules() if n and _under(n, self.frozen)]

    def params(self) -> dict[str, torch.Tensor]:
        """Current parameters as new graph leaves: trainable ones require grad, frozen ones do not.

        Detaching from the real parameters keeps the meta backward away from their ``.grad``.
        """
        out = {}
        for name, p in self.model.named_parameters():
            leaf = p.detach()
            out[name] = leaf.requires_grad_(True) if name in self.trainable else leaf
        return out

    @contextlib.contextmanager
    def frozen_in_eval(self) -> Iterator[None]:
        modes = [m.training for m in self._frozen_modules]
        for m in self._frozen_modules:
            m.training = False
        try:
            yield
        finally:
            for m, mode in zip(self._frozen_modules, modes):
                m.training = mode

    def __call__(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        # eager and fp32 even when the model is compiled / CUDA-graphed or the step runs under bf16
        # autocast (train.compile, train.cuda_graphs, train.bf16): these passes differentiate twice
        with self.frozen_in_eval(), eager_fp32(self.model, x.device.type):
            return functional_call(self.model, {**params, **buffers}, (x,))

    def virtual_step(self, loss: torch.Tensor, params: dict[str, torch.Tensor], rule: SGDRule,
                     buffers: dict[str, torch.Tensor] | None = None, create_graph: bool = True) -> dict[str, torch.Tensor]:
        """theta' = one differentiable step of ``rule`` on ``loss`` from ``params`` (trainable ones)."""
        with no_tf32():  # the backward of the functional forward, and its graph for the meta backward
            grads = torch.autograd.grad(loss, [params[n] for n in self.trainable], create_graph=create_graph)
        buffers = buffers or {}
        new = dict(params)
        for name, g in zip(self.trainable, grads):
            new[name] = sgd_rule_step(params[name], g, rule, rule.lr, buffers.get(name))
        return new


def sgd_rule_step(p: torch.Tensor, g: torch.Tensor, rule: SGDRule, lr: float | torch.Tensor,
                  old: torch.Tensor | None = None, has_old: torch.Tensor | None = None) -> torch.Tensor:
    """One step of ``rule`` for one parameter: weight decay, momentum from the buffer ``old`` (none: the
    optimiser's first step, buf = g), Nesterov, then ``p - lr * g``. ``has_old`` (a bool tensor) says
    whether ``old`` is a real buffer, so one compiled graph serves both cases (``engine/meta_step.py``)."""
    if rule.weight_decay:
        g = g + rule.weight_decay * p
    if rule.momentum:
        if old is None:
            buf = g
        else:
            buf = rule.momentum * old + (1.0 - rule.dampening) * g
            if has_old is not None:
                buf = torch.where(has_old, buf, g)
        g = g + rule.momentum * buf if rule.nesterov else buf
    return p - lr * g


def meta_backward(meta_loss: torch.Tensor, meta_params: Iterable[torch.nn.Parameter]) -> None:
    """Set ``.grad`` of the meta parameters only (the classifier's gradients are not computed)."""
    params = [p for p in meta_params if p.requires_grad]
    with no_tf32():  # the second-order pass through the functional forwards
        grads = torch.autograd.grad(meta_loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.detach()
