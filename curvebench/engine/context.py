"""What the engine hands to a method: data on the device, the recipe, and builders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig

from curvebench.data.types import SplitSpec
from curvebench.engine.data import ImageSource, MetaSampler
from curvebench.engine.fastpath import prepare_model
from curvebench.engine.phase_timer import NoPhaseMarker, PhaseMarker
from curvebench.engine.schedules import recipe_lr, set_lr
from curvebench.models import build_model


@dataclass
class CleanLabels:
    """Clean labels of the training split, for diagnostics only (see ``Method.diagnostics``)."""

    labels: torch.Tensor  # int64 [n] on the device
    noisy: torch.Tensor  # bool [n]: observed label differs from the clean one


@dataclass
class TrainContext:
    """Everything a method may use. It holds observed labels only, never the clean ones."""

    cfg: DictConfig  # the full resolved run config (read-only by convention)
    device: torch.device
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    train: ImageSource  # training split with observed (noisy) labels
    test: ImageSource  # clean test set (evaluation only)
    meta: MetaSampler | None  # clean meta set, when the split has one
    generator: torch.Generator  # the method's own random stream (device)
    run_dir: Path
    cache_dir: Path  # shared between runs on the same split (CurveNet's probe curves)
    split_sha256: str
    split: SplitSpec  # the validated split spec (``ctx.split.meta_per_class``, ``.noise_rate``), never cfg.split
    seed: int  # the run's seed: CurveNet's probe seeds from it (perf's synthetic contexts choose their own)
    extra: dict[str, Any] = field(default_factory=dict)
    # installed by the engine (the Table 8 timer) and by `curvebench perf` (CUDA events, FLOPs)
    phase_marker: PhaseMarker = field(default_factory=NoPhaseMarker)

    def mark_phase(self, name: str) -> None:
        """Mark the start of a phase of the current training step, e.g. ``"virtual"``,
        ``"meta_forward"``, ``"meta_backward"``, ``"real"`` (``engine/phase_timer.py``). In training
        only a sample of steps is timed (host syncs on those only); ``curvebench perf`` times every
        phase of every step (CUDA events on a GPU)."""
        self.phase_marker(name)

    @property
    def recipe(self) -> DictConfig:
        return self.cfg.recipe

    @property
    def class_counts(self) -> np.ndarray:
        """Per-class counts of the observed training labels: all a method may know of the prior."""
        if "class_counts" not in self.extra:
            self.extra["class_counts"] = self.train.class_counts
        return self.extra["class_counts"]

    def build_model(self, **overrides: Any) -> nn.Module:
        """A fresh network of the configured model, on the device, with the ``train`` fast paths
        (``channels_last``, ``compile``, ``cuda_graphs``; see ``engine/fastpath.py``)."""
        mcfg = dict(self.cfg.model)
        name = mcfg.pop("name")
        mcfg.update(overrides)
        model = build_model(name, self.num_classes, in_channels=self.image_shape[0], **mcfg).to(self.device)
        return prepare_model(model, self.cfg.train, self.device)  # channels_last, compile / CUDA graphs

    def build_optimizer(self, params: Iterable[torch.nn.Parameter], **overrides: Any) -> torch.optim.Optimizer:
        """The recipe's optimiser (SGD with momentum, Nesterov and weight decay by default)."""
        r = {**dict(self.recipe), **overrides}
        if r["optimizer"] != "sgd":
            raise ValueError(f"unknown recipe.optimizer {r['optimizer']!r}; only sgd is supported")
        return torch.optim.SGD(params, lr=r["lr"], momentum=r["momentum"], nesterov=r["nesterov"],
                               weight_decay=r["weight_decay"])

    def recipe_lr(self, epoch: int) -> float:
        return recipe_lr(self.recipe, epoch)

    @staticmethod
    def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
        set_lr(optimizer, lr)
