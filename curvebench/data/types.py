"""Data types shared by the data layer, the engine and the methods.

``ImageArrays`` is a raw dataset in memory; ``ImageFiles`` is a dataset read from image files
(Clothing1M, Food-101N, ANIMAL-10N) as file lists; ``SplitSpec`` says how to corrupt a dataset;
``Split`` is the result: which training images are used, their observed (noisy) labels, and the
clean meta set. A ``Split`` is a pure function of (dataset fingerprint, spec) and is stored as a
content-addressed file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NOISE_MODELS = ("none", "unif_prior", "unif", "sym", "flip", "flip2", "pairflip", "asym")
IMBALANCE_PROFILES = ("exp", "step", "none")
ORDERS = ("imbalance_noise", "noise_imbalance")


@dataclass(frozen=True)
class ImageArrays:
    """A dataset held in memory as uint8 images in HWC layout."""

    name: str
    train_images: np.ndarray  # uint8 [N, H, W, C]
    train_labels: np.ndarray  # int64 [N], the original (clean) labels
    test_images: np.ndarray  # uint8 [M, H, W, C]
    test_labels: np.ndarray  # int64 [M]
    num_classes: int
    class_names: tuple[str, ...]
    fingerprint: str  # identifies the source data; part of every split made from it
    official: bool  # True only for the md5-verified official release
    source: dict[str, Any] = field(default_factory=dict)  # path, checksums, notes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) as the models see it."""
        _, h, w, c = self.train_images.shape
        return (c, h, w)


def _empty_labels() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class ImageFiles:
    """A dataset of image files, held as paths relative to ``root`` plus integer labels.

    ``train_labels`` are the observed labels (real-world noise). ``meta_files`` is the dataset's
    declared clean subset (empty when it has none), disjoint from ``train_files``; for these
    datasets ``Split.meta_indices`` are rows of ``meta_files``, not of ``train_files``.
    ``train_clean_labels`` holds the verified label of a training file where the dataset
    publishes one and -1 elsewhere: diagnostics only.
    """

    name: str
    root: str  # absolute directory; every path below is relative to it
    train_files: tuple[str, ...]
    train_labels: np.ndarray  # int64 [N], observed (noisy) labels
    test_files: tuple[str, ...]
    test_labels: np.ndarray  # int64 [M], clean labels
    num_classes: int
    class_names: tuple[str, ...]
    fingerprint: str  # sha256 of the list/annotation files that define the dataset
    official: bool  # these datasets publish no checksums: always False
    meta_files: tuple[str, ...] = ()
    meta_labels: np.ndarray = field(default_factory=_empty_labels)  # int64 [m], clean labels
    train_clean_labels: np.ndarray | None = None  # int64 [N], -1 = unknown; DIAGNOSTICS ONLY
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return len(self.train_files)


@dataclass(frozen=True)
class SplitSpec:
    """Everything that determines a split (with the dataset's fingerprint)."""

    dataset: str
    # k clean images per class taken out first; 0 = no meta set; -1 = all of the declared clean
    # subset (image-folder datasets only)
    meta_per_class: int = 0
    imbalance_profile: str = "exp"  # exp | step | none
    imbalance_factor: float = 1.0  # IF = n_max / n_min, >= 1
    step_tail_fraction: float = 0.5  # step profile: fraction of classes reduced to n_max / IF
    noise_model: str = "none"  # one of NOISE_MODELS
    noise_rate: float = 0.0  # nominal rate p in [0, 1)
    order: str = "imbalance_noise"  # or noise_imbalance
    data_seed: int = 0
    # cap on each class's pool after the meta set is removed (0 = no cap). Left out of to_dict()
    # while 0, so the hashes of specs without a cap are those they had before the key existed.
    pool_per_class: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["imbalance_factor"] = float(d["imbalance_factor"])
        d["noise_rate"] = float(d["noise_rate"])
        if not d["pool_per_class"]:
            del d["pool_per_class"]
        return d

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the spec (not of the split's content)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def tag(self) -> str:
        """Short human-readable name, used in directory names."""
        parts = [self.dataset]
        if self.imbalance_profile != "none":
            parts.append(f"if{self.imbalance_factor:g}" + ("step" if self.imbalance_profile == "step" else ""))
        parts.append(f"{self.noise_model}{self.noise_rate:g}" if self.noise_model != "none" else "clean")
        parts.append(f"k{self.meta_per_class}")
        if self.pool_per_class:
            parts.append(f"cap{self.pool_per_class}")
        if self.order != "imbalance_noise":
            parts.append("n2i")
        parts.append(f"d{self.data_seed}")
        return "-".join(parts)


@dataclass(frozen=True)
class Split:
    """A realised split. Methods see ``noisy_labels`` and the meta set only.

    ``clean_labels`` are the true labels of the training samples: they exist for diagnostics
    (noise rates, selection precision) and must never reach a method's training step.
    """

    spec: SplitSpec
    train_indices: np.ndarray  # int64 [n], rows of the original training set
    noisy_labels: np.ndarray  # int64 [n], observed labels
    # int64 [m], rows of the original training set, disjoint from train (for ImageFiles: rows of
    # ``meta_files``; ``manifest["meta_source"]`` says which)
    meta_indices: np.ndarray
    meta_labels: np.ndarray  # int64 [m], clean labels of the meta set
    clean_labels: np.ndarray  # int64 [n], DIAGNOSTICS ONLY
    manifest: dict[str, Any]  # spec, counts per class, realised rates and matrix, sha256
    sha256: str  # content hash of the split file

    @property
    def num_train(self) -> int:
        return int(self.train_indices.shape[0])

    @property
    def num_meta(self) -> int:
        return int(self.meta_indices.shape[0])
