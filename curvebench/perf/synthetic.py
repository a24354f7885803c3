"""Synthetic CIFAR-shaped data and a ``TrainContext`` around it, for timing and FLOP counting.

Timing does not depend on pixel values, so the images are random uint8 tensors created on the
device; labels are uniform. Each method gets the run config it would get in a suite (composed with
``compose_config``), its own generators, and the engine's ``ImageSet``/``MetaSampler`` views, so
its ``train_step`` runs exactly the code a real run runs, augmentation included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig

from curvebench.config import compose_config
from curvebench.data import spec_from_config
from curvebench.engine.augment import Normalize
from curvebench.engine.context import TrainContext
from curvebench.engine.data import ImageSet, MetaSampler
from curvebench.engine.fastpath import apply_backend_flags, check_flags
from curvebench.engine.method import METHODS

CIFAR_TRAIN = 49000  # CIFAR-10 training images once the 1000-image meta set is removed (IF = 1)
CIFAR_META = 1000
CIFAR_TEST = 10000


@dataclass
class SyntheticData:
    """uint8 NCHW images and int64 labels on one device (shared by every context built on it)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    meta_images: torch.Tensor
    meta_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)


def synthetic_data(device: torch.device, *, num_classes: int = 10, n_train: int = CIFAR_TRAIN,
                   n_meta: int = CIFAR_META, n_test: int = CIFAR_TEST, image_size: int = 32,
                   seed: int = 0) -> SyntheticData:
    """Random CIFAR-shaped images (uint8, on ``device``) with uniform labels; meta labels cycle
    through the classes so that every class has meta images."""
    g = torch.Generator(device=device).manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, device=device, generator=g)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, num_classes, (n,), device=device, generator=g)

    meta_labels = torch.arange(n_meta, device=device) % num_classes
    return SyntheticData(images(n_train), labels(n_train), images(n_meta), meta_labels, images(n_test),
                         labels(n_test), num_classes)


def bench_config(method: str, model: str, *, batch_size: int | None = None, device: str = "cpu",
                 overrides: Sequence[str] = ()) -> DictConfig:
    """The run config ``method`` gets in the CIFAR-10 suites (ResNet-32 or WRN-16-8, the harmonised
    recipe), on a 40% noisy split, with ``overrides`` last."""
    base = [f"method={method}", f"model={model}", "dataset=cifar10", "split.noise_rate=0.4",
            f"train.device={device}", "train.progress=false", "train.checkpoint=false"]
    if batch_size is not None:
        base.append(f"recipe.batch_size={batch_size}")
    return compose_config([*base, *overrides])


def synthetic_context(cfg: DictConfig, data: SyntheticData, device: torch.device, workdir: Path,
                      seed: int = 1) -> TrainContext:
    """A ``TrainContext`` over ``data`` configured as ``cfg``, as ``run.build_context`` would make it."""
    from curvebench.run import _stream_seed

    check_flags(cfg.train, device)
    apply_backend_flags(cfg.train, device)
    generators = {name: torch.Generator(device=device).manual_seed(_stream_seed(seed, i))
                  for i, name in enumerate(("data", "meta", "method"))}
    norm = Normalize(list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std), device)
    aug = cfg.dataset.augment
    cl = bool(cfg.train.channels_last)

    def image_set(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> ImageSet:
        return ImageSet(images, labels, data.num_classes, norm, int(aug.pad), bool(aug.flip), gen, cl,
                        str(aug.get("pad_mode", "reflect")))

    train = image_set(data.train_images, data.train_labels, generators["data"])
    test = image_set(data.test_images, data.test_labels, generators["data"])
    meta = (MetaSampler(image_set(data.meta_images, data.meta_labels, generators["meta"]))
            if len(data.meta_labels) else None)
    run_dir = workdir / "run"
    cache_dir = workdir / "cache"
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    spec = spec_from_config(cfg)
    split_sha256 = "0" * 64
    METHODS.get(cfg.method.name).prepare_for_timing(cfg, data.train_labels, cache_dir, split_sha256, seed)
    return TrainContext(cfg=cfg, device=device, num_classes=data.num_classes, image_shape=data.image_shape,
                        train=train, test=test, meta=meta, generator=generators["method"], run_dir=run_dir,
                        cache_dir=cache_dir, split_sha256=split_sha256, split=spec, seed=seed)
