"""Class-Balanced loss (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
CVPR 2019), docs/methods.md §5: every sample's loss is weighted by w_{y} = (1 - beta) / (1 - beta^{n_y}),
normalised so that the K class weights sum to K, with n_y the observed count of its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import MISSING, MethodConfig, Number, check_beta, check_nonneg, require
from curvebench.engine.ops import one_hot
from curvebench.engine.reweighting import DEFAULT_BETA, as_device_tensor, class_balanced_weights, mean_weight_by_noise
from curvebench.errors import ConfigError

LOSS_TYPES = ("softmax", "sigmoid", "focal")


def cb_softmax_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted softmax CE as torch's ``CrossEntropyLoss(weight=w)`` computes it (the LDAM-DRW
    code's "Reweight"): sum_i w_{y_i} CE_i / sum_i w_{y_i}."""
    return F.cross_entropy(logits, target, weight=class_weights)


def cb_sigmoid_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """The CB code's sigmoid loss: one binary CE per class (one-hot targets), each sample's K terms
    weighted by w_{y_i}, summed and divided by the number of positive labels (= the batch size)."""
    onehot = one_hot(target, logits.shape[1], logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    return (class_weights[target][:, None] * bce).sum() / target.shape[0]


def cb_focal_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor,
                  gamma: float) -> torch.Tensor:
    """The CB code's sigmoid focal loss: sum_{i,k} w_{y_i} (1 - p_t)^gamma BCE_{ik} / B, where
    p_t = sigmoid(z) for the labelled class and 1 - sigmoid(z) for the others. The modulator is
    computed as exp(-gamma * softplus(-s)) with s = z for the labelled class and -z otherwise
    ((1 - p_t) = sigmoid(-s)), the numerically stable form of the CB code."""
    onehot = one_hot(target, logits.shape[1], logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    signed = logits * (2.0 * onehot - 1.0)
    modulator = torch.exp(-gamma * F.softplus(signed)) if gamma != 0 else torch.ones_like(bce)
    return (class_weights[target][:, None] * modulator * bce).sum() / target.shape[0]


@dataclass
class ClassBalancedConfig(MethodConfig):
    beta: Number = MISSING  # effective-number beta in [0, 1)
    loss_type: str = MISSING  # one of LOSS_TYPES
    gamma: Number = MISSING  # focal only, >= 0

    def __post_init__(self) -> None:
        check_beta(self.beta, "method.beta")
        require(self.loss_type in LOSS_TYPES,
                f"method.loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        check_nonneg(self.gamma, "method.gamma")


@register_method("cb")
class ClassBalanced(Method):
    """Class-Balanced loss (docs/methods.md §5): the module's class weights with beta = 0.9999,
    computed once from the observed class counts (``ctx.class_counts``) and used from the first epoch.

    ``loss_type``:
    - ``softmax`` (default): class-weighted softmax CE, the LDAM-DRW code's ``--train_rule Reweight``
      (torch ``CrossEntropyLoss(weight=w)``, i.e. normalised by the sum of the batch's weights).
    - ``sigmoid``: the CB code's per-class binary CE, weighted, summed and divided by the number of
      positives (the batch size); the classifier bias starts at -log(K-1) (prior 1/K) and gets no
      weight decay, as in the CB code.
    - ``focal``: the CB code's sigmoid focal loss with ``gamma`` (1.0 in its scripts), same bias
      init and weight-decay exclusion.

    [DECISION] softmax "Reweight" by default (docs/methods.md §5; CurveNet's Table 1 does
    not say which variant it ran). [DECISION] n_c are the observed (noisy) counts (docs/methods.md §16.5).
    Deviations: the harmonised recipe instead of the CB code's (no Nesterov, wd 2e-4, 5-epoch warm-up
    from 0, x0.01 at 160 and x0.0001 at 180, 40x40 pad-crop); the softmax loss is normalised by the
    batch's summed weights (the LDAM-DRW/PyTorch convention) rather than by the batch size (the CB
    TF code's ``softmax_cross_entropy`` with weights).
    """

    config_class = ClassBalancedConfig

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.method.loss_type != "softmax" and int(cfg.dataset.num_classes) < 2:
            raise ConfigError("the sigmoid/focal CB losses need at least 2 classes")

    def setup(self) -> None:
        self.model = self.ctx.build_model()
        self.loss_type = str(self.cfg.loss_type)
        self.gamma = float(self.cfg.gamma)
        k = self.ctx.num_classes
        w = class_balanced_weights(self.ctx.class_counts, float(self.cfg.get("beta", DEFAULT_BETA)))
        self.class_weights = as_device_tensor(w, self.ctx.device)
        if self.loss_type == "softmax":
            self.optimizer = self.ctx.build_optimizer(self.model.parameters())
            return
        head: nn.Linear = getattr(self.model, self.model.classifier)
        with torch.no_grad():  # prior pi = 1/K: sigmoid(b) = 1/K
            head.bias.fill_(-float(np.log(k - 1)) if k > 2 else 0.0)
        bias = head.bias
        rest = [p for p in self.model.parameters() if p is not bias]
        self.optimizer = self.ctx.build_optimizer(rest)
        self.optimizer.add_param_group({"params": [bias], "weight_decay": 0.0})

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "softmax":
            return cb_softmax_loss(logits, target, self.class_weights)
        if self.loss_type == "sigmoid":
            return cb_sigmoid_loss(logits, target, self.class_weights)
        return cb_focal_loss(logits, target, self.class_weights, self.gamma)

    def train_step(self, batch, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        loss = self.loss(self.model(batch.x), batch.y)
        self.step(self.optimizer, loss)
        return {"loss": loss.detach()}

    def diagnostics(self, phase: Phase, epoch: int, clean) -> dict[str, Any]:
        if epoch != phase.epochs - 1:  # the weights never change: report them once
            return {}
        return mean_weight_by_noise(self.class_weights[self.ctx.train.labels], clean)

    def artifacts(self) -> dict[str, np.ndarray]:
        return {"class_weights": self.class_weights.cpu().numpy()}
