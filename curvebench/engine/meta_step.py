"""The meta step as one pure function, compiled into one graph when ``train.compile_meta`` is on (issue 14).

The eager meta step (``engine/virtual.py``: ``FunctionalModel.virtual_step`` + ``meta_backward``) builds an
autograd graph and differentiates it twice, op by op; ``train.compile_meta: false`` (the default) keeps it,
unchanged. Here the same step is written as a pure function of explicit inputs, differentiated with
``torch.func``, so that ``torch.compile`` can turn the whole of it into one graph::

    theta'   = rule(theta, d L_virt(theta, Theta) / d theta)        inner torch.func.grad
    L_meta   = meta_loss(f(x_meta; theta'), y_meta)
    dL/dTheta                                                       outer torch.func.grad_and_value

Inputs, all explicit (nothing the transforms differentiate or mutate is captured):

- the classifier's trainable parameters theta; SLMO's frozen ones as constants (no gradient, no update,
  no second-order path; their BatchNorm layers in eval mode, as in ``FunctionalModel``);
- the BatchNorm buffers: every functional forward gets fresh clones of them (as ``FunctionalModel``
  does), so the real running statistics never change; they are *arguments* of each transformed
  function because BatchNorm's in-place running-stat update inside ``torch.func.grad`` may only write
  to tensors of its own level;
- the weighting network's parameters Theta (passed to ``functional_call``);
- the batch, the meta batch and the method's per-step tensors (``extra``: CurveNet's curves, Dynamic
  Loss's ranks and Gumbel noise, drawn outside from the method's generator so the stream stays seeded
  and resumable);
- the real optimiser's rule (``SGDRule``): momentum, Nesterov, dampening and weight decay are graph
  constants; the current lr and the momentum buffers are tensors, with a per-parameter flag for
  "no buffer yet" (``torch.where`` picks the gradient itself, exactly as the eager step), so neither an
  lr change nor the optimiser's first step recompiles.

A method supplies only its own pieces (``MetaProblem``): how the virtual loss is formed from the
functional forward's logits and the weighting network, and the meta loss (mean CE by default). The
result (``MetaStepResult``) holds the meta-gradient of every weighting-net parameter, the meta loss and
the problem's auxiliary outputs; the method sets the gradients (``set_grads``) and steps its own
optimiser, then does its real step eagerly as before.

Compilation (``meta_compile_options``): ``torch.compile(fullgraph=True, dynamic=False)`` with
``train.compile_backend``. Static shapes give one graph per input shape, chosen by the shapes alone, so
a resumed run computes every step with the graph the uninterrupted run used (bit-identical resume).
The pass runs in fp32 without TF32 and without autocast whatever ``train.bf16`` / ``train.tf32`` say,
as the eager meta passes do; a ``train.compile``-d model is traced through its plain module. With
``train.cuda_graphs`` the real step keeps its CUDA graphs and the meta graph is compiled in inductor's
default mode (not CUDA-graphed). Methods without a meta step ignore ``train.compile_meta``.

The inductor caches (FX graph and AOTAutograd caches) live in a persistent per-user directory
(``inductor_cache_dir``: ``$TORCHINDUCTOR_CACHE_DIR`` when set, else
``$XDG_CACHE_HOME/curvebench/inductor``, ``~/.cache/curvebench/inductor`` without XDG), so a graph is
compiled once per shape and machine, not once per run.

Float results: in float64 the compiled and eager steps agree to ~1e-14 relative (tests/test_meta_compile.py);
in float32 the compiled graph reorders reductions and fuses multiply-adds, so results differ from the
eager path at the level of float32 rounding and the runs diverge slowly from there (a different, equally
valid trajectory: compile_meta is part of the config hash).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, grad_and_value

from curvebench.engine.fastpath import fp32, train_setting
from curvebench.engine.virtual import FunctionalModel, SGDRule, sgd_rule_step

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# one compiled graph per (method, model, shape, dtype): a process that trains many runs (a test session,
# a worker running a suite) must not hit torch's default of 8 and fall back to eager
RECOMPILE_LIMIT = 256

MetaNet = Callable[..., Any]  # the weighting network called with the parameters being differentiated


def mean_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


@dataclass(frozen=True)
class MetaProblem:
    """A method's own pieces of the meta step; pure functions of their arguments (module-level
    functions or ``functools.partial`` of them: they become part of the graph).

    ``virtual_loss(meta_net, logits, y, extra) -> (loss, aux)``: the loss of the virtual step, from the
    functional forward's logits of the training batch; ``meta_net(*args)`` runs the weighting network with
    the parameters being differentiated; ``extra`` is the tuple of tensors the method passed to the step;
    ``aux``, a tuple of tensors (possibly empty), is returned detached in ``MetaStepResult.aux``.
    ``meta_loss(logits, y)``: the loss of the looked-ahead classifier on the meta batch.
    """

    virtual_loss: Callable[[MetaNet, torch.Tensor, torch.Tensor, tuple], tuple[torch.Tensor, tuple]]
    meta_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mean_cross_entropy


@dataclass
class MetaStepResult:
    grads: dict[str, torch.Tensor]  # d L_meta / d Theta, by the weighting net's parameter names
    meta_loss: torch.Tensor  # detached
    aux: tuple  # the problem's auxiliary outputs (detached)

    def set_grads(self, meta_net: nn.Module) -> None:
        """``.grad`` of the weighting net's parameters, as ``virtual.meta_backward`` sets them. A parameter
        the meta loss does not reach gets a zero gradient (eager: None); none of the methods has one."""
        for name, p in meta_net.named_parameters():
            if p.requires_grad:
                p.grad = self.grads[name]


def inductor_cache_dir() -> Path:
    """The persistent inductor cache: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else the user's cache dir."""
    if os.environ.get(INDUCTOR_CACHE_ENV):
        return Path(os.environ[INDUCTOR_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "curvebench" / "inductor"


def use_persistent_inductor_cache() -> Path:
    """Point torch's inductor caches at ``inductor_cache_dir()`` (before the first compile; idempotent)."""
    path = inductor_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ[INDUCTOR_CACHE_ENV] = str(path)
    return path


def meta_compile_options(train: Mapping[str, Any] | Any) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments for the meta step, or None when ``train.compile_meta`` is off."""
    if not bool(train_setting(train, "compile_meta", False)):
        return None
    return {"backend": str(train_setting(train, "compile_backend", "inductor")), "fullgraph": True, "dynamic": False}


def _pure_meta_step(model: nn.Module, meta_net: nn.Module, problem: MetaProblem, rule: SGDRule,
                    meta_params: dict[str, torch.Tensor], trainable: dict[str, torch.Tensor],
                    fixed: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                    momentum: dict[str, torch.Tensor], has_momentum: dict[str, torch.Tensor], lr: torch.Tensor,
                    x: torch.Tensor, y: torch.Tensor, meta_x: torch.Tensor, meta_y: torch.Tensor,
                    extra: tuple) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, Any]]:
    """(d L_meta / d Theta, (L_meta, aux)): the whole meta step as a function of its inputs (module docstring)."""

    def forward(params: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                inputs: torch.Tensor) -> torch.Tensor:
        clones = {n: b.clone() for n, b in buffers.items()}  # the real running statistics stay untouched
        return functional_call(model, {**params, **fixed, **clones}, (inputs,))

    def virtual_loss(params, fixed, buffers, meta_params, x, y, extra):
        def net(*args: Any) -> Any:
            return functional_call(meta_net, meta_params, args)

        loss, aux = problem.virtual_loss(net, forward(params, fixed, buffers, x), y, extra)
        return loss, aux

    def meta_loss(meta_params, trainable, fixed, buffers, momentum, has_momentum, lr, x, y, meta_x, meta_y, extra):
        grads, aux = grad(virtual_loss, has_aux=True)(trainable, fixed, buffers, meta_params, x, y, extra)
        new = {n: sgd_rule_step(p, grads[n], rule, lr, momentum.get(n), has_momentum.get(n))
               for n, p in trainable.items()}
        loss = problem.meta_loss(forward(new, fixed, buffers, meta_x), meta_y)
        return loss, aux

    meta_grads, (loss, aux) = grad_and_value(meta_loss, has_aux=True)(
        meta_params, trainable, fixed, buffers, momentum, has_momentum, lr, x, y, meta_x, meta_y, extra)
    return meta_grads, (loss, aux)


class MetaStep:
    """The pure meta step bound to one classifier (``FunctionalModel``: trainable and SLMO-frozen names),
    one weighting network and one ``MetaProblem``; compiled with ``compile_options`` (None: run the pure
    function eagerly through ``torch.func``, for tests and debugging)."""

    def __init__(self, fm: FunctionalModel, meta_net: nn.Module, problem: MetaProblem,
                 compile_options: dict[str, Any] | None) -> None:
        self.fm, self.meta_net, self.problem = fm, meta_net, problem
        self._fn: Callable[..., Any] = _pure_meta_step
        if compile_options is not None:
            use_persistent_inductor_cache()
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            self._fn = torch.compile(_pure_meta_step, **compile_options)
        self._lr: tuple[float, torch.Tensor] | None = None
        self._flags: dict[bool, torch.Tensor] = {}
        self._zeros: dict[str, torch.Tensor] = {}

    def _lr_tensor(self, lr: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if isinstance(lr, torch.Tensor):
            return lr.to(like.dtype)
        if self._lr is None or self._lr[0] != lr or self._lr[1].dtype != like.dtype:
            self._lr = (lr, torch.tensor(lr, dtype=like.dtype, device=like.device))  # one copy per lr change
        return self._lr[1]

    def _flag(self, value: bool, device: torch.device) -> torch.Tensor:
        if value not in self._flags:
            self._flags[value] = torch.tensor(value, device=device)
        return self._flags[value]

    @contextlib.contextmanager
    def _fp32(self, device_type: str) -> Iterator[None]:
        with fp32(device_type), self.fm.frozen_in_eval():
            yield

    def __call__(self, x: torch.Tensor, y: torch.Tensor, meta_x: torch.Tensor, meta_y: torch.Tensor, rule: SGDRule,
                 momentum: Mapping[str, torch.Tensor] | None = None, extra: tuple = ()) -> MetaStepResult:
        """One meta step: ``rule`` is the virtual step's rule (the real optimiser's, or plain SGD),
        ``momentum`` the real optimiser's momentum buffers by parameter name (``virtual.momentum_buffers``)."""
        model, fm = self.fm.model, self.fm
        params = {n: p.detach() for n, p in model.named_parameters()}
        trainable = {n: params[n] for n in fm.trainable}
        fixed = {n: p for n, p in params.items() if n not in trainable}
        buffers = dict(model.named_buffers())
        meta_params = {n: p.detach() for n, p in self.meta_net.named_parameters() if p.requires_grad}
        like = next(iter(trainable.values()))
        momentum = momentum or {}
        bufs: dict[str, torch.Tensor] = {}
        has: dict[str, torch.Tensor] = {}
        if rule.momentum:
            for n, p in trainable.items():
                old = momentum.get(n)
                if old is None:
                    old = self._zeros.get(n)
                    if old is None or old.shape != p.shape or old.dtype != p.dtype:
                        old = self._zeros[n] = torch.zeros_like(p)
                bufs[n] = old
                has[n] = self._flag(n in momentum, p.device)
        lr = self._lr_tensor(rule.lr, like)
        constants = dataclasses.replace(rule, lr=0.0)  # the graph's constants; lr enters as a tensor
        with self._fp32(x.device.type):
            grads, (loss, aux) = self._fn(model, self.meta_net, self.problem, constants, meta_params, trainable,
                                          fixed, buffers, bufs, has, lr, x, y, meta_x, meta_y, tuple(extra))
        return MetaStepResult(grads, loss.detach(), aux)
