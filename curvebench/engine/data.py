"""Data resident on the device as uint8, with batched on-device augmentation.

Training order and augmentation come from a device ``torch.Generator`` owned by the engine, so
every method sees the same batches for the same seed, and a resumed run the same as an
uninterrupted one. Nothing here synchronises with the host inside an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from curvebench.engine.augment import Normalize, random_crop_flip


@dataclass
class Batch:
    """One training batch. ``index`` is each sample's position in the training split (0..n-1),
    so methods can keep per-sample state (loss curves, weights, masks)."""

    x: torch.Tensor  # float [B, C, H, W], augmented and normalised
    y: torch.Tensor  # int64 [B], observed (noisy) labels
    index: torch.Tensor  # int64 [B]

    def __len__(self) -> int:
        return int(self.y.shape[0])


def to_device_images(images_nhwc: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC numpy -> uint8 NCHW tensor on ``device`` (contiguous)."""
    if images_nhwc.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images_nhwc.dtype}")
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).to(device)


class ImageSet:
    """Images (uint8, on the device) with labels and the views methods ask for."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, normalize: Normalize,
                 pad: int, flip: bool, generator: torch.Generator, channels_last: bool = False,
                 pad_mode: str = "reflect") -> None:
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.normalize = normalize
        self.pad, self.flip, self.pad_mode = pad, flip, pad_mode
        self.generator = generator
        self.channels_last = channels_last

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def class_counts(self) -> np.ndarray:
        """Per-class counts of the labels this set exposes (observed labels for training data)."""
        return np.bincount(self.labels.cpu().numpy(), minlength=self.num_classes).astype(np.int64)

    def view(self, index: torch.Tensor, augment: bool = True) -> torch.Tensor:
        """Normalised float images for ``index``; augmented (crop + flip) when ``augment``."""
        raw = self.images[index]
        x = random_crop_flip(raw, self.pad, self.flip, self.generator, self.pad_mode) if augment else raw.float()
        x = self.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(self, index: torch.Tensor, augment: bool = True) -> Batch:
        return Batch(self.view(index, augment), self.labels[index], index)

    def batches(self, batch_size: int, subset: torch.Tensor | None = None, shuffle: bool = True,
                augment: bool = True, drop_last: bool = False, limit: int | None = None) -> Iterator[Batch]:
        """One epoch of batches over ``subset`` (positions; default all), in a random order."""
        n = len(self) if subset is None else int(subset.shape[0])
        dev = self.labels.device
        if shuffle:
            order = torch.randperm(n, device=dev, generator=self.generator)
            order = order if subset is None else subset[order]
        else:
            order = torch.arange(n, device=dev) if subset is None else subset
        num = n // batch_size if drop_last else -(-n // batch_size)
        if limit is not None:
            num = min(num, limit)
        for i in range(num):
            yield self.batch(order[i * batch_size:(i + 1) * batch_size], augment)

    def num_batches(self, batch_size: int, subset_size: int | None = None, drop_last: bool = False,
                    limit: int | None = None) -> int:
        n = len(self) if subset_size is None else subset_size
        num = n // batch_size if drop_last else -(-n // batch_size)
        return num if limit is None else min(num, limit)


class MetaSampler:
    """Clean meta batches, cycling over shuffled passes of the meta set (CurveNet / MW-Net noise, which
    restart the pass at every epoch with ``load_state_dict({"order": None, "pos": 0})``), or a fresh
    random batch each call (MW-Net imbalance variant).

    ``subset`` restricts it to some positions of ``meta``: a class-balanced part of the meta set
    (``per_class``), or training samples chosen as a pseudo-meta set (their observed labels).
    """

    def __init__(self, meta: ImageSet, subset: torch.Tensor | None = None) -> None:
        self.meta = meta
        self.subset = subset
        self._order: torch.Tensor | None = None
        self._pos = 0

    def __len__(self) -> int:
        return len(self.meta) if self.subset is None else int(self.subset.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        return self.meta.labels if self.subset is None else self.meta.labels[self.subset]

    def per_class(self, k: int) -> "MetaSampler":
        """A sampler over the first ``k`` meta samples of each class (in stored order)."""
        labels = self.labels.cpu()
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:k] for c in range(self.meta.num_classes)])
        keep = keep.sort().values
        base = keep if self.subset is None else self.subset.cpu()[keep]
        return MetaSampler(self.meta, base.to(self.meta.labels.device))

    def _positions(self, order: torch.Tensor) -> torch.Tensor:
        order = order.to(self.meta.labels.device)
        return order if self.subset is None else self.subset[order]

    def next_batch(self, batch_size: int, augment: bool = True) -> Batch:
        """The next batch of the current shuffled pass, like a cycled DataLoader: the last batch of
        a pass may be smaller, and a new shuffled pass starts once one is used up."""
        n = len(self)
        if self._order is None or self._pos >= n:
            self._order = torch.randperm(n, device=self.meta.generator.device, generator=self.meta.generator)
            self._pos = 0
        index = self._order[self._pos:self._pos + batch_size]
        self._pos += batch_size
        return self.meta.batch(self._positions(index), augment)

    def random_batch(self, batch_size: int, augment: bool = True) -> Batch:
        n = len(self)
        index = torch.randperm(n, device=self.meta.generator.device, generator=self.meta.generator)[:batch_size]
        return self.meta.batch(self._positions(index), augment)

    def state_dict(self) -> dict:
        return {"order": self._order, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self._order, self._pos = state["order"], state["pos"]
