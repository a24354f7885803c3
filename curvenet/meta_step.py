"""The differentiable pieces of CurveNet's meta step (paper Eq. 11, 5 and 12; docs/methods.md §2.5),
on the shared functional virtual step (``curvebench/engine/virtual.py``).

    theta_hat(Theta) = one step of the real optimiser's rule (momentum, Nesterov, weight decay,
                       current lr, current momentum buffers) on mean_i G(c_i, y_i; Theta) * CE_i(theta)
    L_meta(Theta)    = mean CE(f(x_meta; theta_hat(Theta)), y_meta)

SLMO leaves the frozen groups out of both (``FunctionalModel(frozen=...)``). Both run without TF32
(``no_tf32``), as does the meta backward (``meta_backward``). ``curvenet_virtual_loss`` is the same
weighted loss as CurveNet's piece of the engine's pure meta step (``train.compile_meta``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from curvebench.engine.fastpath import no_tf32
from curvebench.engine.virtual import FunctionalModel, SGDRule


@no_tf32()  # the meta pass stays fp32 (also CurveNet's forward)
def virtual_params(fm: FunctionalModel, weight_fn: Callable[[], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   rule: SGDRule, buffers: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """theta_hat: one differentiable step on the CurveNet-weighted CE of batch (x, y).

    ``weight_fn()`` returns the [B] sample weights (with the graph to Theta). The loss is
    sum_i w_i CE_i / B, as in the code (no normalisation by the sum of the weights).
    """
    params = fm.params()
    ce = F.cross_entropy(fm(x, params), y, reduction="none")
    loss = (weight_fn() * ce).sum() / ce.shape[0]
    return fm.virtual_step(loss, params, rule, buffers)


def curvenet_virtual_loss(curvenet: Callable[..., torch.Tensor], logits: torch.Tensor, y: torch.Tensor,
                          extra: tuple) -> tuple[torch.Tensor, tuple]:
    """sum_i G(c_i, y_i; Theta) CE_i / B from the functional forward's logits; ``extra`` = (curves [B, D],)."""
    (curves,) = extra
    ce = F.cross_entropy(logits, y, reduction="none")
    return (curvenet(curves, y) * ce).sum() / ce.shape[0], ()


@no_tf32()
def meta_loss(fm: FunctionalModel, params: dict[str, torch.Tensor], x_meta: torch.Tensor,
              y_meta: torch.Tensor) -> torch.Tensor:
    """Mean CE of the look-ahead model on a clean (or pseudo-meta) batch."""
    return F.cross_entropy(fm(x_meta, params), y_meta)
