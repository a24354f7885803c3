"""``stripes``: a tiny deterministic synthetic dataset, generated in memory from its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curvebench.data import ImageArrays, register_dataset
from curvebench.data.hashing import arrays_sha256
from curvebench.errors import DataError


def _images(labels: np.ndarray, size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(0, 96, size=(labels.size, size, size, 3), dtype=np.uint8)
    band = size // num_classes
    for c in range(num_classes):
        images[labels == c, c * band:(c + 1) * band] += 128
    return images


@register_dataset("stripes")
def load_stripes(cfg: dict[str, Any], data_root: Path) -> ImageArrays:
    """The reader: a function of the config alone (``data_root`` is unused)."""
    k, size = int(cfg["num_classes"]), int(cfg["image_size"])
    if not 2 <= k <= size:
        raise DataError(f"stripes: num_classes must lie in 2..image_size ({size}), got {k}")
    rng = np.random.default_rng(int(cfg["seed"]))
    train_y = np.repeat(np.arange(k, dtype=np.int64), int(cfg["train_per_class"]))
    test_y = np.repeat(np.arange(k, dtype=np.int64), int(cfg["test_per_class"]))
    train_x, test_x = _images(train_y, size, k, rng), _images(test_y, size, k, rng)
    return ImageArrays(
        name=str(cfg["name"]), train_images=train_x, train_labels=train_y, test_images=test_x,
        test_labels=test_y, num_classes=k, class_names=tuple(f"band{c}" for c in range(k)),
        fingerprint=arrays_sha256(train_x, train_y, test_x, test_y),  # what every split of it is keyed by
        official=False, source={"format": "curvebench_plugin_example.dataset", "seed": int(cfg["seed"])},
    )
