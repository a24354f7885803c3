"""A real ``TrainContext`` on tiny random data, to unit-test a method's hooks without a split."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from curvebench.config import compose_config
from curvebench.data import spec_from_config
from curvebench.engine.augment import Normalize
from curvebench.engine.context import TrainContext
from curvebench.engine.data import ImageSet
from curvebench.engine.method import METHODS, Method
from curvebench.methods import load_all_methods

_CFG_CACHE: dict[tuple[str, ...], object] = {}


def config(*overrides: str):
    """The digits-suite config with ``overrides`` (composed once per distinct override list)."""
    key = tuple(overrides)
    if key not in _CFG_CACHE:
        _CFG_CACHE[key] = compose_config(["experiment=digits", *overrides])
    return _CFG_CACHE[key]


def make_ctx(labels: Sequence[int], *overrides: str, num_classes: int = 10, seed: int = 0,
             tmp: Path = Path("/nonexistent")) -> TrainContext:
    """A context whose training set has the given observed labels and random 8x8 grey images."""
    cfg = config(*overrides)
    dev = torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=gen)
    norm = Normalize([0.3], [0.4], dev)
    train = ImageSet(images, torch.as_tensor(labels, dtype=torch.int64), num_classes, norm, 1, False, gen,
                     pad_mode="constant")
    test = ImageSet(images[:4], torch.as_tensor(labels[:4], dtype=torch.int64), num_classes, norm, 1, False, gen,
                    pad_mode="constant")
    return TrainContext(cfg=cfg, device=dev, num_classes=num_classes, image_shape=(1, 8, 8), train=train, test=test,
                        meta=None, generator=torch.Generator().manual_seed(seed + 1), run_dir=tmp, cache_dir=tmp,
                        split_sha256="0" * 64, split=spec_from_config(cfg), seed=seed)


def make_method(name: str, labels: Sequence[int], *overrides: str, **kw) -> Method:
    """The registered method ``name`` on a tiny context, after ``setup()``."""
    load_all_methods()
    ctx = make_ctx(labels, f"method={name}", *overrides, **kw)
    method = METHODS.get(name)(ctx, ctx.cfg.method)
    method.setup()
    return method


def labels_from_counts(counts: Sequence[int]) -> list[int]:
    return [int(c) for c in np.repeat(np.arange(len(counts)), counts)]
