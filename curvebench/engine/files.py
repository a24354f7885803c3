"""Image-file datasets (Clothing1M, Food-101N, ANIMAL-10N): the ``ImageSource`` protocol over JPEGs.

These sets are too large to keep on the device, so images are decoded on the host by a thread pool
(PIL releases the GIL while decoding). Augmentation follows MW-Net's
Clothing1M recipe: resize the shorter side to ``resize``, take a random ``crop`` x ``crop`` window
and flip (training); resize and centre-crop (test). The random crop offsets and flips are drawn
in the main thread from a CPU generator that the engine checkpoints, so runs are reproducible.
Every batch draws its crops and flips, augmented or not, so evaluation batches draw too.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from curvebench.engine.data import Batch, num_batches


class FileImageSet:
    """JPEGs decoded on the host per batch: the file-backed ``ImageSource``."""

    def __init__(self, root: str | Path, files: Sequence[str], labels: np.ndarray, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], generator: torch.Generator, device: torch.device,
                 *, resize: int = 256, crop: int = 224, flip: bool = True, workers: int = 8,
                 channels_last: bool = False) -> None:
        self.root = Path(root)
        self.files = list(files)
        self.device = device
        self.labels = torch.as_tensor(labels, dtype=torch.int64, device=device)
        self.num_classes = num_classes
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.generator = generator  # CPU generator
        self.resize, self.crop, self.flip = resize, crop, flip
        self.channels_last = channels_last
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels.cpu().numpy(), minlength=self.num_classes).astype(np.int64)

    def _decode(self, i: int, u: float, v: float, mirror: bool, augment: bool) -> np.ndarray:
        with Image.open(self.root / self.files[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = self.resize / min(w, h)
            im = im.resize((max(self.crop, round(w * scale)), max(self.crop, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            if augment:
                left, top = int(u * (w - self.crop + 1)), int(v * (h - self.crop + 1))
            else:
                left, top = (w - self.crop) // 2, (h - self.crop) // 2
            im = im.crop((left, top, left + self.crop, top + self.crop))
            if augment and mirror:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            return np.asarray(im, dtype=np.uint8)

    def _load(self, index: torch.Tensor, augment: bool, generator: torch.Generator | None = None) -> np.ndarray:
        """Decode the images of ``index`` in parallel; random crops/flips come from the generator."""
        gen = self.generator if generator is None else generator
        idx = index.cpu().tolist()
        n = len(idx)
        uv = torch.rand(n, 2, generator=gen).tolist()
        flips = (torch.rand(n, generator=gen) < 0.5).tolist() if self.flip else [False] * n
        jobs = [(i, u, v, f, augment) for i, (u, v), f in zip(idx, uv, flips)]
        return np.stack(list(self.pool.map(lambda job: self._decode(*job), jobs)))

    def _to_batch(self, arr: np.ndarray, index: torch.Tensor) -> Batch:
        x = torch.from_numpy(arr).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        index = index.to(self.device)
        return Batch(x, self.labels[index], index)

    def view(self, index: torch.Tensor, augment: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
        return self.batch(index, augment, generator).x

    def batch(self, index: torch.Tensor, augment: bool = True, generator: torch.Generator | None = None) -> Batch:
        return self._to_batch(self._load(index, augment, generator), index)

    def num_batches(self, batch_size: int, subset_size: int | None = None, drop_last: bool = False,
                    limit: int | None = None) -> int:
        return num_batches(len(self) if subset_size is None else subset_size, batch_size, drop_last, limit)

    def batches(self, batch_size: int, subset: torch.Tensor | None = None, shuffle: bool = True,
                augment: bool = True, drop_last: bool = False, limit: int | None = None,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        gen = self.generator if generator is None else generator
        n = len(self) if subset is None else int(subset.shape[0])
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        if subset is not None:
            order = subset.cpu()[order]
        num = self.num_batches(batch_size, n, drop_last, limit)
        chunks = [order[i * batch_size:(i + 1) * batch_size] for i in range(num)]
        for chunk in chunks:
            yield self.batch(chunk, augment, gen)

    def eval_batches(self, batch_size: int, subset: torch.Tensor | None = None) -> Iterator[Batch]:
        """Batches over ``subset`` (default all) in order, centre-cropped (the crop draws still happen)."""
        return self.batches(batch_size, subset, shuffle=False, augment=False)

    def _with(self, files: list[str], labels: torch.Tensor) -> "FileImageSet":
        out = copy.copy(self)  # the same root, transforms, generator and decoding threads
        out.files, out.labels = files, labels
        return out

    def select(self, positions: torch.Tensor) -> "FileImageSet":
        rows = positions.cpu().tolist()
        return self._with([self.files[i] for i in rows], self.labels[positions.to(self.device)])

    def concat(self, *others: "FileImageSet") -> "FileImageSet":
        for other in others:
            if not isinstance(other, FileImageSet) or other.root != self.root:
                raise TypeError("FileImageSet.concat needs FileImageSets under the same root")
        return self._with(self.files + [f for o in others for f in o.files],
                          torch.cat([self.labels, *(o.labels for o in others)]))
