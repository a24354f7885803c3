"""Synthetic data in the exact CIFAR python-pickle format, for tests and smoke runs.

``write_cifar_pickles`` writes any uint8 images in the official file structure
(``cifar-10-batches-py/`` with data_batch_1..5, test_batch, batches.meta; or
``cifar-100-python/`` with train, test, meta), with the official dict keys and Python 2 pickle
encoding, so the real CIFAR reader reads it back (with ``verify_md5`` off).
``write_synthetic_cifar`` fills it with generated images: each class has its own colour and
oriented stripe pattern, and every image adds a random phase, brightness shift and pixel noise,
so a small network can learn the classes, though not trivially. The files are a pure function
of the arguments (byte-identical on every run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from curvebench.data import py2pickle
from curvebench.data.cifar import CIFAR10_CLASSES, RELEASES, read_cifar
from curvebench.data.types import ImageArrays
from curvebench.errors import DataError


def _class_prototypes(rng: np.random.Generator, k: int) -> dict[str, np.ndarray]:
    return {
        "colour": rng.uniform(50.0, 205.0, size=(k, 3)),
        "amplitude": rng.uniform(-60.0, 60.0, size=(k, 3)),
        "angle": rng.uniform(0.0, np.pi, size=k),
        "cycles": rng.uniform(1.0, 4.0, size=k),
    }


def _render(rng: np.random.Generator, labels: np.ndarray, proto: dict[str, np.ndarray], size: int) -> np.ndarray:
    """uint8 images [N, size, size, 3] for the given labels."""
    n = labels.shape[0]
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    angle = proto["angle"][labels][:, None, None]
    cycles = proto["cycles"][labels][:, None, None]
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1))
    wave = np.sin(2 * np.pi * cycles * (xx * np.cos(angle) + yy * np.sin(angle)) / size + phase)
    img = proto["colour"][labels][:, None, None, :] + proto["amplitude"][labels][:, None, None, :] * wave[..., None]
    img += rng.normal(0.0, 20.0, size=(n, 1, 1, 1))  # brightness
    img += rng.normal(0.0, 40.0, size=img.shape)  # pixel noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _rows(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> [N, 3*H*W] rows of R, G, B planes (the CIFAR layout)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(images.shape[0], -1))


def _dump(path: Path, obj: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        py2pickle.dump(obj, f)


def write_cifar_pickles(
    root: Path,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    class_names: list[str] | None = None,
) -> Path:
    """Write uint8 NHWC RGB arrays as ``root/cifar-10-batches-py`` or ``root/cifar-100-python``.

    The official file structure, dict keys and encoding, for 10 or 100 classes. The directory is
    created atomically: it appears complete or not at all, and concurrent writers are harmless.
    """
    if num_classes not in RELEASES:
        raise DataError(f"the CIFAR pickle format has 10 or 100 classes (two file layouts), not {num_classes}")
    for x in (train_images, test_images):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3 or x.shape[1] != x.shape[2]:
            raise DataError(f"CIFAR images must be uint8 [N, S, S, 3], got {x.dtype} {x.shape}")
    release = RELEASES[num_classes]
    default_names = list(CIFAR10_CLASSES) if num_classes == 10 else [f"class_{i:03d}" for i in range(num_classes)]
    names = class_names or default_names
    train_x, test_x = _rows(train_images), _rows(test_images)
    train_y, test_y = [int(v) for v in train_labels], [int(v) for v in test_labels]
    fnames = [f"image_{i:06d}.png" for i in range(len(train_y) + len(test_y))]
    train_names, test_names = fnames[: len(train_y)], fnames[len(train_y) :]

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-"))
    try:
        out = tmp / release.directory
        out.mkdir()
        if num_classes == 10:
            chunks = np.array_split(np.arange(len(train_y)), len(release.train_files))
            for b, ((fname, _), rows) in enumerate(zip(release.train_files, chunks), start=1):
                _dump(out / fname, {
                    "batch_label": f"training batch {b} of {len(chunks)}",
                    "labels": [train_y[i] for i in rows],
                    "data": train_x[rows],
                    "filenames": [train_names[i] for i in rows],
                })  # fmt: skip
            _dump(out / "test_batch", {
                "batch_label": "testing batch 1 of 1",
                "labels": test_y,
                "data": test_x,
                "filenames": test_names,
            })  # fmt: skip
            _dump(out / "batches.meta", {
                "num_cases_per_batch": int(chunks[0].size),
                "label_names": list(names),
                "num_vis": int(train_x.shape[1]),
            })  # fmt: skip
        else:
            for fname, x, y, fn, label in (
                ("train", train_x, train_y, train_names, "training batch 1 of 1"),
                ("test", test_x, test_y, test_names, "testing batch 1 of 1"),
            ):
                _dump(out / fname, {
                    "filenames": fn,
                    "batch_label": label,
                    "fine_labels": y,
                    "coarse_labels": [v // 5 for v in y],
                    "data": x,
                })  # fmt: skip
            _dump(out / "meta", {
                "fine_label_names": list(names),
                "coarse_label_names": [f"superclass_{i:02d}" for i in range(num_classes // 5)],
            })  # fmt: skip
        try:
            os.replace(out, root / release.directory)
        except OSError:
            if not (root / release.directory).is_dir():  # not a lost race with another writer
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / release.directory


def write_synthetic_cifar(
    root: Path,
    num_classes: int = 10,
    train_per_class: int = 60,
    test_per_class: int = 20,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a synthetic CIFAR-10/100 copy under ``root`` and return its directory.

    ``root/cifar-10-batches-py`` (10 classes, CIFAR-10's class names) or ``root/cifar-100-python``
    (100 classes). The bytes written are a pure function of the arguments.
    """
    if num_classes not in RELEASES:
        raise DataError(f"synthetic CIFAR has 10 or 100 classes (the two file layouts), not {num_classes}")
    if train_per_class < 1 or test_per_class < 1 or image_size < 1:
        raise DataError("synthetic CIFAR needs train_per_class, test_per_class and image_size >= 1")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    proto = _class_prototypes(rng, num_classes)
    train_y = rng.permutation(np.repeat(np.arange(num_classes), train_per_class))
    test_y = rng.permutation(np.repeat(np.arange(num_classes), test_per_class))
    train_x = _render(rng, train_y, proto, image_size)
    test_x = _render(rng, test_y, proto, image_size)
    return write_cifar_pickles(root, train_x, train_y, test_x, test_y, num_classes)


SYNTHETIC_DEFAULTS = {"num_classes": 10, "train_per_class": 60, "test_per_class": 20, "image_size": 32, "seed": 0}


def load_synthetic(cfg: dict[str, Any], data_root: Path) -> ImageArrays:
    """Dataset loader for the ``synthetic`` config: generate under the data root if missing, read back."""
    if cfg.get("verify_md5", False):
        raise DataError("synthetic data is not an official release: set dataset.verify_md5=false")
    params = {key: int(cfg.get(key, default)) for key, default in SYNTHETIC_DEFAULTS.items()}
    release = RELEASES.get(params["num_classes"])
    if release is None:
        raise DataError(f"dataset.num_classes must be 10 or 100 for synthetic data, not {params['num_classes']}")
    tag = "k{num_classes}-tr{train_per_class}-te{test_per_class}-s{image_size}-seed{seed}".format(**params)
    root = Path(data_root) / "synthetic" / tag
    if not (root / release.directory).is_dir():
        write_synthetic_cifar(root, **params)
    data = read_cifar(root / release.directory, release, verify_md5=False, name=str(cfg.get("name", "synthetic")))
    data.source.update({"format": "cifar-python (synthetic)", "generator": params})
    return data
