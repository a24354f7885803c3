"""Data resident on the device as uint8, with batched on-device augmentation.

Training order and augmentation come from a device ``torch.Generator`` owned by the engine, so
every method sees the same batches for the same seed, and a resumed run the same as an
uninterrupted one. Nothing here synchronises with the host inside an epoch.

``ImageSource`` is the protocol every data set follows (``ImageSet`` here, ``FileImageSet`` in
``files.py``); methods and the engine type their data with it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator, Protocol

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


def num_batches(n: int, batch_size: int, drop_last: bool = False, limit: int | None = None) -> int:
    """Batches in one epoch over ``n`` samples (the last one partial unless ``drop_last``), at most ``limit``."""
    num = n // batch_size if drop_last else -(-n // batch_size)
    return num if limit is None else min(num, limit)


class ImageSource(Protocol):
    """What the engine and the methods may ask of a data set (``ImageSet``, ``FileImageSet``).

    Positions are rows of the set (0..len-1). Random draws (batch order, augmentation) come from
    ``generator`` unless a call passes its own: the same calls in the same order draw the same
    numbers, so a method that samples with a generator of its own leaves the engine's stream as it was.
    """

    labels: torch.Tensor  # int64 [n] on the device: observed labels for training data
    num_classes: int
    generator: torch.Generator  # the engine's stream this set draws from by default

    def __len__(self) -> int: ...

    @property
    def class_counts(self) -> np.ndarray: ...

    def view(self, index: torch.Tensor, augment: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised float images of ``index``; augmented when ``augment``."""

    def batch(self, index: torch.Tensor, augment: bool = True, generator: torch.Generator | None = None) -> Batch: ...

    def batches(self, batch_size: int, subset: torch.Tensor | None = None, shuffle: bool = True,
                augment: bool = True, drop_last: bool = False, limit: int | None = None,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        """One epoch of batches over ``subset`` (positions; default all), shuffled unless ``shuffle=False``."""

    def eval_batches(self, batch_size: int, subset: torch.Tensor | None = None) -> Iterator[Batch]:
        """Batches over ``subset`` (default all) in order, unaugmented: for evaluation."""

    def num_batches(self, batch_size: int, subset_size: int | None = None, drop_last: bool = False,
                    limit: int | None = None) -> int: ...

    def select(self, positions: torch.Tensor) -> "ImageSource":
        """A set of the samples at ``positions`` (in that order), drawing from the same generator."""

    def concat(self, *others: "ImageSource") -> "ImageSource":
        """This set followed by ``others`` (their positions shift by the sizes before them), with this
        set's augmentation, normalisation and generator."""


class ImageSet:
    """Images (uint8, on the device) with labels: the device-resident ``ImageSource``."""

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

    def view(self, index: torch.Tensor, augment: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised float images for ``index``; augmented (crop + flip) when ``augment``."""
        raw = self.images[index]
        if augment:
            gen = self.generator if generator is None else generator
            x = random_crop_flip(raw, self.pad, self.flip, gen, self.pad_mode)
        else:
            x = raw.float()
        x = self.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(self, index: torch.Tensor, augment: bool = True, generator: torch.Generator | None = None) -> Batch:
        return Batch(self.view(index, augment, generator), self.labels[index], index)

    def batches(self, batch_size: int, subset: torch.Tensor | None = None, shuffle: bool = True,
                augment: bool = True, drop_last: bool = False, limit: int | None = None,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        """One epoch of batches over ``subset`` (positions; default all), in a random order."""
        gen = self.generator if generator is None else generator
        n = len(self) if subset is None else int(subset.shape[0])
        dev = self.labels.device
        if shuffle:
            order = torch.randperm(n, device=dev, generator=gen)
            order = order if subset is None else subset[order]
        else:
            order = torch.arange(n, device=dev) if subset is None else subset
        for i in range(num_batches(n, batch_size, drop_last, limit)):
            yield self.batch(order[i * batch_size:(i + 1) * batch_size], augment, gen)

    def eval_batches(self, batch_size: int, subset: torch.Tensor | None = None) -> Iterator[Batch]:
        """Batches over ``subset`` (default all) in order, unaugmented; draws nothing from a generator."""
        return self.batches(batch_size, subset, shuffle=False, augment=False)

    def num_batches(self, batch_size: int, subset_size: int | None = None, drop_last: bool = False,
                    limit: int | None = None) -> int:
        return num_batches(len(self) if subset_size is None else subset_size, batch_size, drop_last, limit)

    def _with(self, images: torch.Tensor, labels: torch.Tensor) -> "ImageSet":
        out = copy.copy(self)  # the same augmentation, normalisation and generator
        out.images, out.labels = images, labels
        return out

    def select(self, positions: torch.Tensor) -> "ImageSet":
        return self._with(self.images[positions], self.labels[positions])

    def concat(self, *others: "ImageSet") -> "ImageSet":
        for other in others:
            if not isinstance(other, ImageSet):
                raise TypeError(f"ImageSet.concat needs ImageSets, got a {type(other).__name__}")
        return self._with(torch.cat([self.images, *(o.images for o in others)]),
                          torch.cat([self.labels, *(o.labels for o in others)]))


class MetaSampler:
    """Clean meta batches, cycling over shuffled passes of the meta set (CurveNet / MW-Net noise, which
    ``restart()`` the pass at every epoch), or a fresh random batch each call (MW-Net imbalance variant).

    ``subset`` restricts it to some positions of ``meta``: a class-balanced part of the meta set
    (``per_class``), or training samples chosen as a pseudo-meta set (their observed labels; see
    ``restrict``). Random draws come from ``meta.generator``; the engine checkpoints it and, through
    ``state_dict``, the pass in progress (not ``subset``: its owner restores that).
    """

    def __init__(self, meta: ImageSource, subset: torch.Tensor | None = None) -> None:
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

    def samples(self) -> ImageSource:
        """The samples this sampler draws from, as a set of their own (in stored order)."""
        return self.meta if self.subset is None else self.meta.select(self.subset)

    def restart(self) -> None:
        """Start a new pass: the next ``next_batch`` is the head of a fresh permutation (a
        DataLoader's ``iter()``)."""
        self._order, self._pos = None, 0

    def restrict(self, positions: torch.Tensor, restart: bool = True) -> None:
        """Draw from ``positions`` of ``meta`` only from now on; a new pass starts unless
        ``restart=False``, which keeps the pass in progress (one a checkpoint restored for these
        positions)."""
        self.subset = positions
        if restart:
            self.restart()

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
