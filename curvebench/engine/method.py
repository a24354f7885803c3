"""The Method interface and registry. The training loop (``engine.loop``) is written once; a method
plugs in through these hooks, in the style of USB's ``AlgorithmBase``.

Lifecycle, driven by the engine::

    method = METHODS.get(name)(ctx, cfg)
    method.setup()                      # build networks and optimisers (all of them, up front)
    for phase in method.phases():       # one phase for most methods; several for O2U, HAR, CurveNet
        method.on_phase_start(phase)    # not called again when a run resumes inside this phase
        for epoch in range(phase.epochs):
            method.on_epoch_start(phase, epoch)
            subset = method.train_subset(phase)                 # read every epoch
            generator = method.train_generator(phase)           # None: the engine's data stream
            for batch in ctx.train.batches(phase.batch_size, subset, generator=generator):
                logs = method.train_step(batch, phase, epoch)   # tensors only: no host sync
            method.on_epoch_end(phase, epoch)                   # may sync; returns floats to log
            ... engine evaluates eval_models(), calls diagnostics(), checkpoints ...

State: ``state_dict`` saves every attribute that has ``state_dict``/``load_state_dict`` (modules,
optimisers, meta samplers), is a tensor or a numpy array, plus the plain attributes named in
``extra_state``. Whatever ``on_phase_start`` sets
must be state, because a resumed run restores the state instead of calling it again.

Clean training labels never reach a method's training hooks. ``diagnostics`` alone receives them,
to measure (never to train) selection precision, label-correction accuracy and the like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.engine.method_config import MethodConfig
from curvebench.errors import ConfigError
from curvebench.registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

    from omegaconf import DictConfig

    from curvebench.engine.context import CleanLabels, TrainContext
    from curvebench.engine.data import Batch


@dataclass(frozen=True)
class Phase:
    """A stretch of training with its own length and batch size."""

    name: str
    epochs: int
    batch_size: int
    final: bool = False  # the reported metrics (last/best epoch) come from this phase
    evaluate: bool = True  # evaluate on the test set after each epoch
    drop_last: bool = False


class Method:
    """Base class: plain cross-entropy training of one network with the recipe's optimiser."""

    name: ClassVar[str] = ""
    needs_meta: ClassVar[bool] = False  # needs a clean meta set (split.meta_per_class > 0)
    uses_clean_meta: ClassVar[bool] = False  # trains on clean meta data (a leaderboard flag)
    extra_state: ClassVar[tuple[str, ...]] = ()  # plain attributes to checkpoint
    config_class: ClassVar[type[MethodConfig]] = MethodConfig  # its hyper-parameters: types and value rules

    def __init__(self, ctx: "TrainContext", cfg: "DictConfig") -> None:
        self.ctx = ctx
        self.cfg = cfg
        if self.needs_meta and ctx.meta is None:
            raise ConfigError(
                f"method {self.name!r} needs a clean meta set, but this split has none "
                "(split.meta_per_class=0); set split.meta_per_class to k > 0"
            )

    @classmethod
    def check_config(cls, cfg: "DictConfig") -> None:
        """Rules that span config nodes (e.g. ``method.meta_per_class`` against the split), checked
        when the config is composed, after the ``method`` node passed ``config_class``; raise
        ConfigError saying what to change. Rules on the method's own keys belong in ``config_class``."""

    @classmethod
    def prepare_for_timing(cls, cfg: "DictConfig", train_labels: torch.Tensor, cache_dir: "Path",
                           split_sha256: str, seed: int) -> None:
        """``curvebench perf`` times a method's steps without its preparatory stages: provide
        stand-in inputs of the right shape here (CurveNet: random probe curves)."""

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self) -> None:
        self.model = self.ctx.build_model()
        self.optimizer = self.ctx.build_optimizer(self.model.parameters())

    def phases(self) -> list[Phase]:
        r = self.ctx.recipe
        return [Phase("train", int(r.epochs), int(r.batch_size), final=True)]

    def on_phase_start(self, phase: Phase) -> None:
        pass

    def train_subset(self, phase: Phase) -> torch.Tensor | None:
        """Positions of the training samples to train on this epoch (None: all); read after
        ``on_epoch_start`` every epoch."""
        return None

    def train_generator(self, phase: Phase) -> torch.Generator | None:
        """The generator this epoch's batch order and augmentation are drawn from (None: the
        engine's ``data`` stream, the same batches for every method); read with ``train_subset``.
        A method that trains a side network on batches of its own (CurveNet's probe) returns a
        generator it owns and checkpoints, and the engine's stream stays as it was."""
        return None

    def on_epoch_start(self, phase: Phase, epoch: int) -> None:
        self.ctx.set_lr(self.optimizer, self.ctx.recipe_lr(epoch))

    def train_step(self, batch: "Batch", phase: Phase, epoch: int) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(self.model(batch.x), batch.y)
        self.step(self.optimizer, loss)
        return {"loss": loss.detach()}

    def on_epoch_end(self, phase: Phase, epoch: int) -> dict[str, float]:
        return {}

    def eval_models(self) -> dict[str, nn.Module]:
        """Networks to evaluate; the first one is the reported model."""
        return {"model": self.model}

    def diagnostics(self, phase: Phase, epoch: int, clean: "CleanLabels") -> dict[str, Any]:
        """Measurements that need the clean training labels (never used for training)."""
        return {}

    def artifacts(self) -> dict[str, np.ndarray]:
        """Arrays saved in the run directory at the end (weights, curves...), for figures."""
        return {}

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for key, value in vars(self).items():
            if _has_state(value):  # modules, optimisers, samplers...
                state[key] = value.state_dict()
            elif isinstance(value, (torch.Tensor, np.ndarray)):
                state[key] = value
        for key in self.extra_state:
            state[key] = getattr(self, key)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            current = getattr(self, key, None)
            if _has_state(current):
                current.load_state_dict(value)
            else:
                setattr(self, key, value)


def _has_state(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


METHODS: Registry[type[Method]] = Registry("method")
register_method = METHODS.register
