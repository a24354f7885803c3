"""Fashion-MNIST: the IDX reader on generated files in the real format, the pool cap, the model and the suite.

``test_real_installed_files`` reads the real files of Debian's ``dataset-fashion-mnist`` package
and is skipped where it is not installed (CI installs it).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import curvebench.data.idx as idx
from curvebench.data import load_dataset
from curvebench.data.split import make_split
from curvebench.data.types import SplitSpec
from curvebench.errors import DataError
from curvebench.models import build_model
from tests.datahelpers import dataset_cfg

# the fingerprint of the official release: json_sha256 of the four decompressed files' sha256s
FMNIST_FINGERPRINT = "0f0ef21577af5199b6474cbf474b2fdaf3155e38329af3dc8590a70895ca18ef"


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: two zero bytes, the type code, ndim, big-endian int32 dims, then the uint8 values."""
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def small_release(seed: int = 0, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }


def write_release(directory: Path, arrays: dict[str, np.ndarray], compress: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        blob = idx_bytes(array)
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(blob, mtime=0))
        else:
            (directory / name).write_bytes(blob)
    return directory


@pytest.fixture
def no_debian(monkeypatch, tmp_path: Path) -> Path:
    """Hide the installed Debian copy: the reader's fallback directory is an empty one."""
    fake = tmp_path / "no-debian"
    monkeypatch.setattr(idx, "DEBIAN_DIR", fake)
    return fake


def cfg(**kw) -> dict:
    return {**dataset_cfg("fmnist"), **kw}


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_both_compressions(tmp_path: Path, no_debian, compress: bool) -> None:
    arrays = small_release()
    write_release(tmp_path / "fashion-mnist", arrays, compress)
    data = load_dataset(cfg(verify_sha256=False), tmp_path)
    assert data.train_images.shape == (40, 28, 28, 1) and data.test_images.shape == (20, 28, 28, 1)
    assert np.array_equal(data.train_images[..., 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    assert data.train_labels.dtype == np.int64 and data.train_images.flags.writeable
    assert data.official is False and data.image_shape == (1, 28, 28) and data.class_names[9] == "Ankle boot"


def test_compression_does_not_change_the_fingerprint(tmp_path: Path, no_debian) -> None:
    arrays = small_release()
    raw = load_dataset(cfg(verify_sha256=False, path=str(write_release(tmp_path / "raw", arrays, False))), tmp_path)
    gz = load_dataset(cfg(verify_sha256=False, path=str(write_release(tmp_path / "gz", arrays, True))), tmp_path)
    assert raw.fingerprint == gz.fingerprint


def test_pinned_checksums_match_the_shapes() -> None:
    for f in idx.FMNIST_FILES:
        assert f.size == 4 + 4 * len(f.shape) + int(np.prod(f.shape))
    assert idx.FMNIST_FILES[0].size == 47_040_016


def test_wrong_sha256_names_the_package(tmp_path: Path, no_debian) -> None:
    write_release(tmp_path / "fashion-mnist", small_release(), compress=True)
    with pytest.raises(DataError, match=r"sha256 .*apt-get install --reinstall dataset-fashion-mnist.*verify_sha256=false"):
        load_dataset(cfg(), tmp_path)


def test_missing_data_names_the_package_and_paths(tmp_path: Path, no_debian) -> None:
    with pytest.raises(DataError) as e:
        load_dataset(cfg(), tmp_path)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and str(tmp_path / "fashion-mnist") in msg
    assert str(no_debian) in msg and "dataset.download=true" in msg and "\n" not in msg


def test_missing_one_file_is_named(tmp_path: Path, no_debian) -> None:
    d = write_release(tmp_path / "fashion-mnist", small_release(), compress=False)
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte.*apt-get install dataset-fashion-mnist"):
        load_dataset(cfg(verify_sha256=False), tmp_path)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_files(tmp_path: Path, compress: bool) -> None:
    blob = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-100]
    path = tmp_path / ("x.gz" if compress else "x")
    path.write_bytes(gzip.compress(blob) if compress else blob)
    with pytest.raises(DataError, match="truncated"):
        idx.read_idx(path)
    whole = gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(whole[: len(whole) // 2])  # a gzip stream cut short
    with pytest.raises(DataError, match="not a readable gzip file"):
        idx.read_idx(cut)


def test_truncated_header_and_trailing_bytes(tmp_path: Path) -> None:
    (tmp_path / "h").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="truncated IDX header"):
        idx.read_idx(tmp_path / "h")
    (tmp_path / "t").write_bytes(idx_bytes(np.zeros(3, np.uint8)) + b"\0")
    with pytest.raises(DataError, match="trailing bytes"):
        idx.read_idx(tmp_path / "t")


def test_wrong_magic_numbers(tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"\x12\x34" + idx_bytes(np.zeros(3, np.uint8))[2:])
    with pytest.raises(DataError, match="bad magic number"):
        idx.read_idx(tmp_path / "m")
    (tmp_path / "f").write_bytes(idx_bytes(np.zeros(3, np.uint8), type_code=0x0D))  # float32
    with pytest.raises(DataError, match=r"type code 0x0d, expected 0x08"):
        idx.read_idx(tmp_path / "f")
    (tmp_path / "e").write_bytes(b"")
    with pytest.raises(DataError, match="bad magic number empty"):
        idx.read_idx(tmp_path / "e")


def test_labels_out_of_range(tmp_path: Path, no_debian) -> None:
    arrays = small_release()
    arrays["train-labels-idx1-ubyte"][0] = 10
    write_release(tmp_path / "fashion-mnist", arrays, compress=False)
    with pytest.raises(DataError, match=r"labels must lie in 0..9"):
        load_dataset(cfg(verify_sha256=False), tmp_path)


def test_download_fetches_the_gz_files(tmp_path: Path, no_debian) -> None:
    upstream = write_release(tmp_path / "upstream", small_release(), compress=True)
    root = tmp_path / "data"
    data = load_dataset(cfg(verify_sha256=False, download=True, url=upstream.as_uri() + "/"), root)
    assert sorted(p.name for p in (root / "fashion-mnist").iterdir()) == sorted(f"{f.name}.gz" for f in idx.FMNIST_FILES)
    assert data.train_images.shape == (40, 28, 28, 1)
    with pytest.raises(DataError, match="could not download"):
        load_dataset(cfg(download=True, url=(tmp_path / "nowhere").as_uri()), tmp_path / "other")


def test_download_uses_the_upstream_urls(tmp_path: Path, no_debian, monkeypatch) -> None:
    fetched: list[str] = []

    def fake(url: str, dest: Path, expected_md5: str | None) -> None:
        fetched.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(gzip.compress(idx_bytes(small_release()[dest.name[:-3]])))

    monkeypatch.setattr(idx, "download", fake)
    load_dataset(cfg(verify_sha256=False, download=True), tmp_path)
    base = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
    assert fetched == [f"{base}/{f.name}.gz" for f in idx.FMNIST_FILES]


def test_pool_cap_keeps_old_hashes_and_nests() -> None:
    spec = SplitSpec("fmnist", meta_per_class=10, imbalance_factor=10, noise_model="flip2", noise_rate=0.4)
    capped = dataclasses.replace(spec, pool_per_class=50)
    assert "pool_per_class" not in spec.to_dict() and capped.to_dict()["pool_per_class"] == 50
    assert spec.spec_hash() != capped.spec_hash() and capped.tag() == "fmnist-if10-flip20.4-k10-cap50-d0"
    labels = np.tile(np.arange(10), 200)
    from curvebench.data.types import ImageArrays

    data = ImageArrays("fmnist", np.zeros((labels.size, 1, 1, 1), np.uint8), labels, np.zeros((10, 1, 1, 1), np.uint8),
                       np.arange(10), 10, tuple("abcdefghij"), "fp", False)
    full, small = (make_split(data, dataclasses.replace(capped, pool_per_class=c)) for c in (0, 50))
    assert small.manifest["counts"]["pool"] == [50] * 10 and small.manifest["counts"]["target"][0] == 50
    assert full.manifest["counts"]["pool"] == [190] * 10
    assert np.array_equal(small.meta_indices, full.meta_indices)  # the meta set does not depend on the cap
    balanced = SplitSpec("fmnist", meta_per_class=10)  # IF 1: the training set is the whole pool
    pools = [make_split(data, dataclasses.replace(balanced, pool_per_class=c)).train_indices for c in (30, 50)]
    assert pools[0].size == 300 and set(pools[0]) < set(pools[1])  # caps are nested
    with pytest.raises(DataError, match="pool_per_class must be an integer >= 0"):
        make_split(data, dataclasses.replace(spec, pool_per_class=-1))


def test_pool_cap_from_the_config() -> None:
    from curvebench.data.specs import spec_from_config

    spec = spec_from_config({"dataset": {"name": "fmnist", "meta_per_class": 10}, "split": {"pool_per_class": "300"}})
    assert spec.pool_per_class == 300
    assert spec_from_config({"dataset": {"name": "fmnist", "meta_per_class": 10}, "split": {}}).pool_per_class == 0


def test_fmnist_model_takes_one_channel() -> None:
    model = build_model("fmnist_cnn", 10, in_channels=1)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert [g[0] for g in model.slmo_groups] == ["stem", "stage1", "stage2", "stage3"] and model.classifier == "linear"


def test_fmnist_suite_grid() -> None:
    from curvebench.methods import builtin_methods
    from curvebench.suites import plan_suite

    runs = plan_suite("fmnist")
    assert len(runs) == 7 * len(builtin_methods()) * 3  # method: [builtin]: an installed plugin adds no run
    cells = {(r.config["split"]["imbalance_factor"], r.config["split"]["noise_model"], r.config["split"]["noise_rate"])
             for r in runs}
    assert cells == {(f, "flip2", p) for f in (1, 10, 50) for p in (0.0, 0.4)} | {(10, "unif_prior", 0.4)}
    one = runs[0].config
    assert one["dataset"]["name"] == "fmnist" and one["suite"]["name"] == "fmnist" and one["suite"]["tables"] == ["fmnist"]
    assert one["model"]["name"] == "fmnist_cnn" and one["split"]["pool_per_class"] > 0


@pytest.mark.skipif(not all(idx.file_path(idx.DEBIAN_DIR, f.name) for f in idx.FMNIST_FILES)
                    and not os.environ.get("CURVEBENCH_REQUIRE_FMNIST"),  # CI sets it: fail, never skip
                    reason="needs the real files: apt-get install dataset-fashion-mnist")
def test_real_installed_files(tmp_path: Path) -> None:
    data = load_dataset(dataset_cfg("fmnist"), tmp_path)  # tmp_path has no copy: the Debian one is found
    assert data.official and data.fingerprint == FMNIST_FINGERPRINT
    assert data.train_images.shape == (60_000, 28, 28, 1) and data.test_images.shape == (10_000, 28, 28, 1)
    assert np.bincount(data.train_labels).tolist() == [6000] * 10 and np.bincount(data.test_labels).tolist() == [1000] * 10
    first = idx.read_bytes(idx.file_path(idx.DEBIAN_DIR, "train-images-idx3-ubyte"))
    assert len(first) == 47_040_016 and hashlib.sha256(first).hexdigest() == idx.FMNIST_FILES[0].sha256
    mean, std = dataset_cfg("fmnist")["normalize"].values()
    assert abs(data.train_images.mean() / 255 - mean[0]) < 1e-4 and abs(data.train_images.std() / 255 - std[0]) < 1e-4


def test_fmnist_smoke_runs_every_method_on_a_locked_split() -> None:
    from curvebench.data.lock import LOCK_PATH, read_lock
    from curvebench.data.specs import spec_from_config
    from curvebench.engine.method import METHODS
    from curvebench.suites import plan_suite

    smoke = plan_suite("fmnist_smoke")
    assert sorted(r.config["method"]["name"] for r in smoke) == sorted(METHODS.names())
    assert {r.config["train"]["limit_batches"] for r in smoke} == {2} and smoke[0].config["recipe"]["epochs"] == 1
    suite_specs = {spec_from_config(r.config).spec_hash() for r in plan_suite("fmnist", ["method=ce", "seed=1"])}
    assert {spec_from_config(r.config).spec_hash() for r in smoke} <= suite_specs <= set(read_lock(LOCK_PATH))


def test_image_folder_datasets_take_no_pool_cap(tmp_path: Path) -> None:
    from curvebench.data.types import ImageFiles

    data = ImageFiles("clothing1m", str(tmp_path), ("a.jpg", "b.jpg"), np.array([0, 1]), ("c.jpg",), np.array([0]),
                      2, ("x", "y"), "fp", False)
    spec = SplitSpec("clothing1m", imbalance_profile="none")
    assert make_split(data, spec).num_train == 2
    with pytest.raises(DataError, match="takes no pool cap: use split.pool_per_class=0"):
        make_split(data, dataclasses.replace(spec, pool_per_class=10))
