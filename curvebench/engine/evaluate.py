"""Test-set evaluation: confusion matrix on the device, one host sync per evaluation."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from curvebench.engine.data import ImageSource

SHOT_THRESHOLDS = {"many": 100, "few": 20}  # many: > 100 training images; few: < 20; medium: the rest


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without autograd inside the block; its mode is restored after. With
    ``ImageSource.eval_batches`` this is every evaluation pass (test set, held-out part, per-sample losses)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def confusion_matrix(model: nn.Module, test: ImageSource, batch_size: int) -> np.ndarray:
    """[K, K] counts, rows = true class, columns = predicted class."""
    k = test.num_classes
    conf = torch.zeros(k * k, dtype=torch.int64, device=test.labels.device)
    with evaluating(model):
        for batch in test.eval_batches(batch_size):
            pred = model(batch.x).argmax(1)
            conf += torch.bincount(batch.y * k + pred, minlength=k * k)
    return conf.view(k, k).cpu().numpy()


def accuracy(conf: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(100.0 * np.trace(conf) / max(1, conf.sum()))


def per_class_accuracy(conf: np.ndarray) -> np.ndarray:
    return 100.0 * np.diag(conf) / np.maximum(1, conf.sum(1))


def shot_groups(train_counts: np.ndarray) -> dict[str, list[int]]:
    """Classes with many (> 100), medium (20..100) and few (< 20) training images."""
    many = [int(c) for c in np.flatnonzero(train_counts > SHOT_THRESHOLDS["many"])]
    few = [int(c) for c in np.flatnonzero(train_counts < SHOT_THRESHOLDS["few"])]
    medium = [c for c in range(len(train_counts)) if c not in many and c not in few]
    return {"many": many, "medium": medium, "few": few}


def shot_accuracy(conf: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float | None]:
    """Accuracy over the test images of each group's classes (None for an empty group)."""
    out: dict[str, float | None] = {}
    for name, classes in groups.items():
        total = conf[classes].sum() if classes else 0
        out[name] = float(100.0 * conf[classes, classes].sum() / total) if total else None
    return out
