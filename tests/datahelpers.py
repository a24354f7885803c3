"""Helpers for the data-layer tests: fake datasets and config loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from curvebench.data.cifar import CIFAR10_CLASSES
from curvebench.data.types import ImageArrays

CONF = Path(__file__).resolve().parents[1] / "curvebench" / "conf"


def dataset_cfg(name: str) -> dict:
    """The committed Hydra config of a dataset, as a plain dict."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / f"{name}.yaml"), resolve=True)


def fake_cifar(num_classes: int = 10, per_class: int | None = None, name: str | None = None) -> ImageArrays:
    """Labels of the size of CIFAR-10/100 (5000 / 500 per class) with 1x1 images, interleaved."""
    per_class = per_class or 50_000 // num_classes
    labels = np.tile(np.arange(num_classes, dtype=np.int64), per_class)
    names = CIFAR10_CLASSES if num_classes == 10 else tuple(f"c{i}" for i in range(num_classes))
    return ImageArrays(
        name=name or ("cifar10" if num_classes == 10 else "cifar100"),
        train_images=np.zeros((labels.size, 1, 1, 3), np.uint8),
        train_labels=labels,
        test_images=np.zeros((num_classes, 1, 1, 3), np.uint8),
        test_labels=np.arange(num_classes, dtype=np.int64),
        num_classes=num_classes,
        class_names=names,
        fingerprint="f" * 64,
        official=False,
        source={"format": "fake", "path": "/nowhere"},
    )


def listing(root: Path) -> list[str]:
    """Every file and directory under root (to check that nothing was written)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")) if Path(root).exists() else []
