"""HAR: Heteroskedastic Adaptive Regularisation (Cao et al., "Heteroskedastic and Imbalanced Deep
Learning with Adaptive Regularization", ICLR 2021; code kaidic/HAR), docs/methods.md §11.

Three steps, all inside one run:
1. estimation phases: train a network with CE on one half of the training set and measure its
   per-class accuracy on the other half, against the observed labels, without augmentation; then
   the swapped fold;
2. per-class regularisation strengths reg_j = err_j^0.6 / n_j^0.4, normalised by their maximum;
3. the final phase: a fresh network trained with mean CE + lambda * mean_i(tau_{y_i} * sum_l
   ||d(mean CE)/d a_l^(i)||_2), a_l the pre-affine (normalised) outputs of the residual stages'
   BatchNorm layers, with double backprop.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from curvebench.engine.evaluate import evaluating
from curvebench.engine.method import Method, Phase, register_method
from curvebench.engine.method_config import (
    MISSING,
    MethodConfig,
    Number,
    check_beta,
    check_int_at_least,
    check_nonneg,
    require,
)
from curvebench.engine.reweighting import (
    DEFAULT_BETA,
    as_device_tensor,
    drw_class_weights,
    drw_start_epoch,
    mean_weight_by_noise,
)
from curvebench.engine.schedules import recipe_lr
from curvebench.errors import ConfigError

ERR_EXPONENT, COUNT_EXPONENT = 0.6, 0.4  # weight_est.py


# -- the BatchNorm outputs ----------------------------------------------------------------------
def stage_batchnorms(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """The BatchNorm2d layers inside the model's residual stages, in forward order.

    The stages are the module groups after the stem in ``model.slmo_groups``:
    - resnet32 / resnet8: layer1..layer3, two BNs per BasicBlock: 30 / 6 (stem BN excluded);
    - wrn16_8: block1..block3, two BNs per pre-activation block: 12 (the final BN before pooling,
      outside the groups, excluded like the stem);
    - digits_cnn: stage1..stage3, one BN each: 3 (stem BN excluded);
    - resnet50 (torchvision): layer1..layer4, three BNs per bottleneck plus the downsample BNs: 52.
    """
    groups = getattr(model, "slmo_groups", None)
    if not groups or len(groups) < 2:
        raise ConfigError(f"{type(model).__name__} does not declare its residual stages (slmo_groups); "
                          "HAR needs them to find the BatchNorm layers it regularises")
    out = []
    for group in groups[1:]:
        for name in group:
            for sub, module in model.get_submodule(name).named_modules():
                if isinstance(module, nn.BatchNorm2d):
                    out.append((f"{name}.{sub}" if sub else name, module))
    if not out:
        raise ConfigError(f"{type(model).__name__} has no BatchNorm2d in its residual stages; HAR needs them")
    return out


class BNOutputRecorder:
    """Forward hooks that collect the outputs of some BatchNorm layers while ``record()`` is open.

    HAR differentiates the loss with respect to the *normalised, pre-affine* BN outputs
    x_hat (HAR's ``BatchNorm2dMul`` returns them). We record the BN output y = gamma * x_hat + beta
    instead, which leaves the model untouched (plain BatchNorm2d, fused kernels, same state dict):
    since x_hat only reaches the loss through y, dL/dx_hat = gamma * dL/dy per channel, exactly.
    """

    def __init__(self, bns: list[nn.BatchNorm2d]) -> None:
        self.bns = bns
        self.outputs: list[torch.Tensor] = []
        self.active = False
        self.handles = [bn.register_forward_hook(self._hook) for bn in bns]

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self.active:
            self.outputs.append(output)

    @contextmanager
    def record(self) -> Iterator[list[torch.Tensor]]:
        self.outputs = []
        self.active = True
        try:
            yield self.outputs
        finally:
            self.active = False

    def gammas(self) -> list[torch.Tensor | None]:
        return [bn.weight if bn.affine else None for bn in self.bns]


def har_regulariser(loss: torch.Tensor, bn_outputs: list[torch.Tensor], gammas: list[torch.Tensor | None],
                    sample_weights: torch.Tensor) -> torch.Tensor:
    """mean_i( tau_i * sum_l || d loss / d x_hat_l^(i) ||_2 ), with d/dx_hat = gamma * d/dy (see
    ``BNOutputRecorder``); the gradients keep their graph (double backprop)."""
    grads = torch.autograd.grad(loss, bn_outputs, create_graph=True)
    total = torch.zeros_like(sample_weights)
    for g, gamma in zip(grads, gammas):
        if gamma is not None:
            g = g * gamma[None, :, None, None]
        total = total + g.flatten(1).norm(dim=1)
    return (sample_weights * total).mean()


# -- the class weights --------------------------------------------------------------------------
def pooled_class_error(correct: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Per-class error of the held-out predictions pooled over the folds: 1 - sum_f correct / sum_f
    total. [DECISION] a class with no held-out sample (possible with one fold only) gets error 1."""
    c, t = np.asarray(correct, dtype=np.float64).sum(0), np.asarray(total, dtype=np.float64).sum(0)
    err = np.ones_like(t)
    seen = t > 0
    err[seen] = 1.0 - c[seen] / t[seen]
    return err


def har_class_weights(err: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """reg_j = err_j^0.6 / n_j^0.4, divided by its maximum (weight_est.py). A class with no observed
    sample (never a training label) gets 0; if every error is 0 every weight is 0 (no regulariser)."""
    err, n = np.asarray(err, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    reg = np.zeros_like(n)
    present = n > 0
    reg[present] = np.power(err[present], ERR_EXPONENT) / np.power(n[present], COUNT_EXPONENT)
    top = reg.max()
    return reg / top if top > 0 else reg


def scaled_recipe(recipe: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    """The recipe stretched to ``epochs``: milestones and warm-up scaled by epochs / recipe.epochs
    (rounded); the recipe itself when the lengths agree."""
    r = OmegaConf.to_container(recipe, resolve=True) if OmegaConf.is_config(recipe) else dict(recipe)
    base = int(r["epochs"])
    if epochs == base:
        return r
    f = epochs / base
    r["epochs"] = epochs
    r["milestones"] = [int(round(m * f)) for m in r.get("milestones") or []]
    r["warmup_epochs"] = int(round(int(r.get("warmup_epochs", 0)) * f))
    return r


@dataclass
class HARConfig(MethodConfig):
    reg_weight: Number = MISSING  # lambda, >= 0
    folds: int = MISSING  # 1 or 2
    est_epochs: Optional[int] = MISSING  # null: the recipe's epochs
    drw: bool = MISSING
    drw_epoch: Optional[int] = MISSING  # null: the recipe's first LR milestone
    beta: Number = MISSING  # in [0, 1)

    def __post_init__(self) -> None:
        check_nonneg(self.reg_weight, "method.reg_weight")
        require(self.folds in (1, 2),
                f"method.folds must be 1 (official: one held-out half) or 2 (both halves), got {self.folds!r}")
        check_int_at_least(self.est_epochs, "method.est_epochs", 1, null="the recipe's epochs")
        check_beta(self.beta, "method.beta")
        check_int_at_least(self.drw_epoch, "method.drw_epoch", 0, null="the recipe's first milestone")


@register_method("har")
class HAR(Method):
    """HAR (Cao et al., ICLR 2021; kaidic/HAR: cifar_hetero_est.py, weight_est.py, cifar_train.py;
    docs/methods.md §11).

    Phases: ``estimate_fold1`` and ``estimate_fold2`` (not final, not evaluated on the test set),
    then ``train`` (final). The training set is cut into two random halves (a permutation drawn
    from the method's generator, first floor(n/2) positions = half A, as HAR's ``split_dataset``).
    Fold 1 trains a fresh network with CE on half A for ``est_epochs`` and, at its end, predicts
    half B (eval mode, no augmentation) and counts per-class hits against the observed labels;
    fold 2 swaps the halves with another fresh network. Then err_j = 1 - hits_j / held-out_j pooled
    over the folds, reg_j = err_j^0.6 / n_j^0.4 / max (n_j = ``ctx.class_counts``), and each sample
    gets tau_i = reg_{observed label}. The final phase trains a fresh network with
    loss = CE + lambda * mean_i(tau_i sum_l ||d CE / d x_hat_l^(i)||_2) (CE = the batch mean,
    so every per-sample gradient carries 1/B), x_hat_l the normalised pre-affine outputs of the
    BatchNorm layers in the residual stages (``stage_batchnorms``: 30 for resnet32, stem excluded),
    with create_graph double backprop. Optional DRW (``drw: true``): effective-number class weights
    (beta 0.9999) in the CE from the recipe's first milestone on (HAR: epoch 80 of 120).

    [DECISION] two folds, pooled (``folds: 2``): every training sample is predicted exactly once by
    a network that never saw it, so every class with a sample has an error estimate, and the
    estimate uses twice the held-out data. The official code runs one fold (``--split 0``) and
    never combines the two; ``folds: 1`` reproduces it.
    [DECISION] lambda = 10 (``reg_weight``), the value of the README's only training command; the
    argparse default 0.1 makes the regulariser negligible, since the gradients of the batch-mean CE
    carry a 1/B factor (digits, IF 10, p 0.4, 3 seeds: lambda 0.1 / 10 / 100 give about 73 / 72 /
    27 % against CE's 73.5 %; ResNet-32 sums 30 layers instead of digits_cnn's 3).
    [DECISION] estimation length ``est_epochs`` null = the recipe's epochs, with the recipe's
    schedule (scaled when est_epochs differs): the official estimation runs the same 120-epoch
    schedule (lr 0.1, x0.1 at 80/100) as its final training.
    Deviations: the harmonised recipe for every phase (Nesterov, wd 5e-4, warm-up, 200 epochs,
    x0.1 at 80/100) instead of HAR's (no Nesterov, wd 1e-4, 120 epochs, x0.1 at 80/100, no warm-up);
    the per-class accuracy is measured once at the end of a fold (the official code measures after
    every epoch and keeps the last, the same number); the gradient w.r.t. x_hat is computed as
    gamma * d/dy from plain BatchNorm layers (identical, see ``BNOutputRecorder``); in-place ReLUs
    (torchvision's resnet50) are made out-of-place so the recorded BN outputs stay intact.
    """

    config_class = HARConfig

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.method.drw:  # DRW needs a switch epoch: drw_epoch or the recipe's first milestone
            drw_start_epoch(cfg.recipe, cfg.method.drw_epoch)

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self) -> None:
        ctx = self.ctx
        self.folds = int(self.cfg.folds)
        self.est_epochs = int(self.cfg.est_epochs) if self.cfg.est_epochs is not None else int(ctx.recipe.epochs)
        self.est_recipe = scaled_recipe(ctx.recipe, self.est_epochs)
        self.lam = float(self.cfg.reg_weight)
        self.drw_epoch = drw_start_epoch(ctx.recipe, self.cfg.drw_epoch) if self.cfg.drw else None
        # every network up front: the final one first (the same initial weights as CE's network
        # for the same seed), then one per estimation fold
        self.model = ctx.build_model()
        self.optimizer = ctx.build_optimizer(self.model.parameters())
        self.est_models = nn.ModuleList([ctx.build_model() for _ in range(self.folds)])
        self.est_optimizers = [ctx.build_optimizer(m.parameters()) for m in self.est_models]
        for i, opt in enumerate(self.est_optimizers):
            setattr(self, f"est_optimizer{i + 1}", opt)  # attributes with state_dict are checkpointed
        for module in self.model.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
        self.bn_names = [name for name, _ in stage_batchnorms(self.model)]
        self.recorder = BNOutputRecorder([bn for _, bn in stage_batchnorms(self.model)])
        n, k = len(ctx.train), ctx.num_classes
        order = torch.randperm(n, device=ctx.device, generator=ctx.generator)
        self.half_a, self.half_b = order[: n // 2].sort().values, order[n // 2:].sort().values
        self.est_correct = np.zeros((self.folds, k))
        self.est_total = np.zeros((self.folds, k))
        self.class_reg = torch.zeros(k, device=ctx.device)
        self.class_weights = torch.ones(k, device=ctx.device)
        self._reg_sum = torch.zeros((), device=ctx.device)
        self._steps = 0

    def phases(self) -> list[Phase]:
        b = int(self.ctx.recipe.batch_size)
        folds = [Phase(f"estimate_fold{i + 1}", self.est_epochs, b, evaluate=False) for i in range(self.folds)]
        return [*folds, Phase("train", int(self.ctx.recipe.epochs), b, final=True)]

    def _fold(self, phase: Phase) -> int | None:
        return int(phase.name[-1]) - 1 if phase.name.startswith("estimate_fold") else None

    def _fold_data(self, fold: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(training positions, held-out positions) of a fold."""
        return (self.half_a, self.half_b) if fold == 0 else (self.half_b, self.half_a)

    def train_subset(self, phase: Phase) -> torch.Tensor | None:
        fold = self._fold(phase)
        return None if fold is None else self._fold_data(fold)[0]

    def on_phase_start(self, phase: Phase) -> None:
        if self._fold(phase) is None:  # the final phase: the regularisation weights
            err = pooled_class_error(self.est_correct, self.est_total)
            reg = har_class_weights(err, self.ctx.class_counts)
            self.class_reg = as_device_tensor(reg, self.ctx.device)

    def on_epoch_start(self, phase: Phase, epoch: int) -> None:
        fold = self._fold(phase)
        self._reg_sum = torch.zeros((), device=self.ctx.device)
        self._steps = 0
        if fold is not None:
            self.ctx.set_lr(self.est_optimizers[fold], recipe_lr(self.est_recipe, epoch))
            return
        self.ctx.set_lr(self.optimizer, self.ctx.recipe_lr(epoch))
        if self.drw_epoch is not None:
            beta = float(self.cfg.get("beta", DEFAULT_BETA))
            w = drw_class_weights(self.ctx.class_counts, epoch, self.drw_epoch, beta)
            self.class_weights = as_device_tensor(w, self.ctx.device)

    def train_step(self, batch, phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        fold = self._fold(phase)
        if fold is not None:  # estimation: plain CE on this fold's half
            loss = F.cross_entropy(self.est_models[fold](batch.x), batch.y)
            self.step(self.est_optimizers[fold], loss)
            return {"loss": loss.detach()}
        with self.recorder.record() as outputs:
            logits = self.model(batch.x)
        weight = self.class_weights if self.drw_epoch is not None else None
        ce = F.cross_entropy(logits, batch.y, weight=weight)
        reg = har_regulariser(ce, outputs, self.recorder.gammas(), self.class_reg[batch.y])
        loss = ce + self.lam * reg
        self.step(self.optimizer, loss)
        self._reg_sum += reg.detach()
        self._steps += 1
        return {"loss": loss.detach()}

    def on_epoch_end(self, phase: Phase, epoch: int) -> dict[str, float]:
        fold = self._fold(phase)
        if fold is None:
            return {"regulariser": float(self._reg_sum) / max(1, self._steps)}
        if epoch != phase.epochs - 1:
            return {}
        correct, total = self.heldout_counts(fold)
        self.est_correct[fold], self.est_total[fold] = correct, total
        return {"heldout_top1_observed": float(100.0 * correct.sum() / max(1.0, total.sum()))}

    def heldout_counts(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-class hits and sizes of the fold's held-out half, against the observed labels, in
        eval mode, without augmentation."""
        held, k = self._fold_data(fold)[1], self.ctx.num_classes
        hits = torch.zeros(k, device=self.ctx.device)
        size = torch.zeros(k, device=self.ctx.device)
        with evaluating(self.est_models[fold]) as model:
            for batch in self.ctx.train.eval_batches(int(self.ctx.cfg.train.eval_batch_size), held):
                pred = model(batch.x).argmax(1)
                size += torch.bincount(batch.y, minlength=k).float()
                hits += torch.bincount(batch.y[pred == batch.y], minlength=k).float()
        return hits.cpu().double().numpy(), size.cpu().double().numpy()

    def eval_models(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def diagnostics(self, phase: Phase, epoch: int, clean) -> dict[str, Any]:
        if self._fold(phase) is not None or epoch != phase.epochs - 1:
            return {}
        return mean_weight_by_noise(self.class_reg[self.ctx.train.labels], clean)

    def artifacts(self) -> dict[str, np.ndarray]:
        return {"class_reg": self.class_reg.cpu().numpy(),
                "class_error": pooled_class_error(self.est_correct, self.est_total),
                "heldout_correct": self.est_correct, "heldout_total": self.est_total}
