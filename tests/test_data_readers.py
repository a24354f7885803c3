"""Readers: CIFAR pickles (md5, download, unofficial copies), synthetic data, digits."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from curvebench.data import load_dataset, write_synthetic_cifar
from curvebench.data.cifar import CIFAR10, CIFAR100, read_cifar
from curvebench.data.hashing import json_sha256, md5
from curvebench.data.synthetic import write_cifar_pickles
from curvebench.errors import DataError
from tests.datahelpers import dataset_cfg, listing


def _arrays(k: int, n_train: int, n_test: int, size: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8), rng.integers(0, k, n_train),
            rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8), rng.integers(0, k, n_test))  # fmt: skip


@pytest.mark.parametrize("release", [CIFAR10, CIFAR100])
def test_cifar_round_trip_exact_arrays(tmp_path: Path, release) -> None:
    tx, ty, sx, sy = _arrays(release.num_classes, 23, 7)
    directory = write_cifar_pickles(tmp_path, tx, ty, sx, sy, release.num_classes)
    assert sorted(p.name for p in directory.iterdir()) == sorted(f for f, _ in release.all_files)
    data = read_cifar(directory, release, verify_md5=False)
    assert np.array_equal(data.train_images, tx) and np.array_equal(data.train_labels, ty)
    assert np.array_equal(data.test_images, sx) and np.array_equal(data.test_labels, sy)
    assert data.train_labels.dtype == np.int64 and data.official is False
    assert data.image_shape == (3, 4, 4)


def test_pickles_encode_like_the_official_release(tmp_path: Path) -> None:
    directory = write_synthetic_cifar(tmp_path, 10, train_per_class=2, test_per_class=1)
    raw = (directory / "data_batch_1").read_bytes()
    as_str = pickle.loads(raw, encoding="latin1")  # how torchvision reads it
    as_bytes = pickle.loads(raw, encoding="bytes")  # how the CIFAR web page's snippet reads it
    assert set(as_str) == {"batch_label", "labels", "data", "filenames"}
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert as_str["data"].dtype == np.uint8 and as_str["data"].shape == (4, 3072)
    assert np.array_equal(as_str["data"], as_bytes[b"data"])
    meta = pickle.loads((directory / "batches.meta").read_bytes(), encoding="latin1")
    assert meta["label_names"][0] == "airplane" and meta["num_vis"] == 3072
    c100 = write_synthetic_cifar(tmp_path / "c100", 100, train_per_class=1, test_per_class=1)
    train = pickle.loads((c100 / "train").read_bytes(), encoding="latin1")
    assert {"filenames", "batch_label", "fine_labels", "coarse_labels", "data"} == set(train)
    assert set(pickle.loads((c100 / "meta").read_bytes(), encoding="latin1")) == {"fine_label_names", "coarse_label_names"}


def test_synthetic_files_are_deterministic(tmp_path: Path) -> None:
    a = write_synthetic_cifar(tmp_path / "a", 10, train_per_class=3, test_per_class=2, seed=5)
    b = write_synthetic_cifar(tmp_path / "b", 10, train_per_class=3, test_per_class=2, seed=5)
    for f in a.iterdir():
        assert f.read_bytes() == (b / f.name).read_bytes()


def test_synthetic_config_generates_then_reads_back(tmp_path: Path) -> None:
    cfg = dataset_cfg("synthetic")
    data = load_dataset(cfg, tmp_path)
    assert (tmp_path / "synthetic").is_dir() and data.name == "synthetic" and not data.official
    assert data.train_images.shape == (600, 32, 32, 3) and data.test_images.shape == (200, 32, 32, 3)
    assert np.bincount(data.train_labels).tolist() == [60] * 10
    again = load_dataset(cfg, tmp_path)
    assert again.fingerprint == data.fingerprint
    # Classes are learnable: nearest class mean on the raw pixels beats chance by far.
    x = data.train_images.reshape(600, -1).astype(float)
    means = np.stack([x[data.train_labels == c].mean(0) for c in range(10)])
    t = data.test_images.reshape(200, -1).astype(float)
    pred = np.argmin(((t[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == data.test_labels).mean() > 0.5


def test_md5_verification_on_and_off(tmp_path: Path) -> None:
    directory = write_synthetic_cifar(tmp_path, 10, train_per_class=2, test_per_class=1)
    with pytest.raises(DataError, match="verify_md5=false") as e:
        read_cifar(directory, CIFAR10, verify_md5=True)
    assert "data_batch_1" in str(e.value) and CIFAR10.train_files[0][1] in str(e.value)
    unofficial = read_cifar(directory, CIFAR10, verify_md5=False)
    assert unofficial.official is False and len(unofficial.fingerprint) == 64
    # The md5 path, with a release whose checksums are those of these files.
    sums = {f: md5(directory / f) for f, _ in CIFAR10.all_files}
    local = dataclasses.replace(
        CIFAR10,
        train_files=tuple((f, sums[f]) for f, _ in CIFAR10.train_files),
        test_files=tuple((f, sums[f]) for f, _ in CIFAR10.test_files),
        meta_file=(CIFAR10.meta_file[0], sums[CIFAR10.meta_file[0]]),
    )
    official = read_cifar(directory, local, verify_md5=True)
    assert official.official is True and official.source["md5"] == sums
    assert official.fingerprint == json_sha256({"release": "cifar10", "md5": sums})
    assert np.array_equal(official.train_images, unofficial.train_images)


def test_md5_mismatch_through_the_config(tmp_path: Path) -> None:
    write_synthetic_cifar(tmp_path, 10, train_per_class=2, test_per_class=1)
    before = listing(tmp_path)
    with pytest.raises(DataError, match="verify_md5=false"):
        load_dataset(dataset_cfg("cifar10"), tmp_path)
    assert listing(tmp_path) == before
    data = load_dataset({**dataset_cfg("cifar10"), "verify_md5": False}, tmp_path)
    assert data.train_images.shape == (20, 32, 32, 3)


def test_missing_data_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset(dataset_cfg("cifar100"), tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-100-python") in msg and "cifar-100-python.tar.gz" in msg
    assert CIFAR100.archive_md5 in msg and "dataset.download=true" in msg
    assert listing(tmp_path) == []
    directory = write_synthetic_cifar(tmp_path, 10, train_per_class=2, test_per_class=1)
    (directory / "test_batch").unlink()
    with pytest.raises(DataError, match="lacks test_batch"):
        load_dataset({**dataset_cfg("cifar10"), "verify_md5": False}, tmp_path)


def _tarball(tmp_path: Path) -> tuple[Path, str]:
    src = write_synthetic_cifar(tmp_path / "src", 10, train_per_class=2, test_per_class=1)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_from_file_url_checks_md5(tmp_path: Path) -> None:
    archive, digest = _tarball(tmp_path)
    cfg = {**dataset_cfg("cifar10"), "verify_md5": False, "download": True, "url": archive.as_uri()}
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match="md5"):
        load_dataset({**cfg, "archive_md5": "0" * 32}, root)
    assert listing(root) == []  # no partial download, nothing extracted
    data = load_dataset({**cfg, "archive_md5": digest}, root)
    assert data.train_images.shape == (20, 32, 32, 3)
    assert (root / "cifar-10-python.tar.gz").is_file() and (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_tarball_in_data_root_is_extracted(tmp_path: Path) -> None:
    archive, digest = _tarball(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    (root / archive.name).write_bytes(archive.read_bytes())
    with pytest.raises(DataError, match="md5"):  # the official archive md5 is expected by default
        load_dataset({**dataset_cfg("cifar10"), "verify_md5": False}, root)
    data = load_dataset({**dataset_cfg("cifar10"), "verify_md5": False, "archive_md5": digest}, root)
    assert data.num_classes == 10


def test_digits_test_split_is_balanced_and_fixed(tmp_path: Path) -> None:
    a = load_dataset(dataset_cfg("digits"), tmp_path)
    b = load_dataset(dataset_cfg("digits"), tmp_path / "elsewhere")
    assert np.bincount(a.test_labels).tolist() == [50] * 10
    assert a.train_images.shape == (1297, 8, 8, 1) and a.train_images.dtype == np.uint8
    assert a.train_images.max() == 255 and a.image_shape == (1, 8, 8)
    assert a.fingerprint == b.fingerprint and np.array_equal(a.test_images, b.test_images)
    # Pinned: the test set is drawn with a constant seed, so the arrays never change.
    assert a.fingerprint == "6106c9b5bd64504ce40f8d035ef8c71911d72022efeac333ffdfa09785bc323f"


def test_unknown_dataset_and_class_mismatch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="available: .*cifar10"):
        load_dataset({"name": "imagenet"}, tmp_path)
    with pytest.raises(DataError, match="num_classes"):
        load_dataset({**dataset_cfg("digits"), "num_classes": 7}, tmp_path)
