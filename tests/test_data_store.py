"""Stored splits: determinism, golden hashes, integrity checks, and errors that write nothing."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from curvebench.data import SplitSpec, get_split, load_dataset, load_split, make_split, spec_from_config
from curvebench.data.store import manifest_path
from curvebench.errors import DataError
from tests.datahelpers import dataset_cfg, fake_cifar, listing

SMOKE = SplitSpec("synthetic", meta_per_class=10, imbalance_factor=10, noise_model="unif_prior", noise_rate=0.4)

# sha256 of split files made from the default synthetic data set (curvebench/conf/dataset/synthetic.yaml).
GOLDEN = {
    SMOKE: "cefa64278fa072ff36cecfc967b5a5ec65201b3dd223ecad6788262d66112c8c",
    dataclasses.replace(SMOKE, noise_model="flip2"): "7f28b0bf719ac86cbc89d547e451328442feaca4297e4a9dfd355da5eee6faf2",
    dataclasses.replace(SMOKE, imbalance_profile="step", imbalance_factor=5, order="noise_imbalance"):
        "b89e6c1512ada86e531c443c1fc91b4c364da21208ea83c08d10ddda935acfa0",
    dataclasses.replace(SMOKE, meta_per_class=0, imbalance_profile="none", imbalance_factor=1, noise_model="none",
                        noise_rate=0.0): "b30e87edf27d3eef8459e78c9a5708321df7d10a819e7880e3cac69a31f7f327",
}  # fmt: skip


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return load_dataset(dataset_cfg("synthetic"), tmp_path_factory.mktemp("data"))


def test_same_spec_gives_byte_identical_files(synthetic, tmp_path: Path) -> None:
    a = get_split(synthetic, SMOKE, tmp_path / "a")
    b = get_split(synthetic, SMOKE, tmp_path / "b")
    assert a.sha256 == b.sha256 == make_split(synthetic, SMOKE).sha256
    for name in (f"{a.sha256}.npz", manifest_path(tmp_path, SMOKE, synthetic.fingerprint).name):
        assert (tmp_path / "a" / "synthetic" / name).read_bytes() == (tmp_path / "b" / "synthetic" / name).read_bytes()
    again = get_split(synthetic, SMOKE, tmp_path / "a")  # loaded, verified
    assert again.sha256 == a.sha256 and np.array_equal(again.noisy_labels, a.noisy_labels)
    assert again.manifest == json.loads(json.dumps(a.manifest))


def test_golden_hashes(synthetic) -> None:
    got = {spec: make_split(synthetic, spec).sha256 for spec in GOLDEN}
    assert got == GOLDEN


def test_every_field_changes_the_hash() -> None:
    changes = dict(dataset="x", meta_per_class=11, imbalance_profile="step", imbalance_factor=11.0,
                   step_tail_fraction=0.4, noise_model="unif", noise_rate=0.3, order="noise_imbalance", data_seed=1,
                   pool_per_class=500)  # fmt: skip
    assert set(changes) == {f.name for f in dataclasses.fields(SplitSpec)}
    hashes = {dataclasses.replace(SMOKE, **{k: v}).spec_hash() for k, v in changes.items()}
    assert len(hashes | {SMOKE.spec_hash()}) == len(changes) + 1


def test_split_file_content(synthetic, tmp_path: Path) -> None:
    split = get_split(synthetic, SMOKE, tmp_path)
    npz = tmp_path / "synthetic" / f"{split.sha256}.npz"
    with np.load(npz, allow_pickle=False) as z:
        assert sorted(z.files) == ["clean_labels", "fingerprint", "meta_indices", "meta_labels", "noisy_labels", "spec", "train_indices"]
        assert str(z["fingerprint"]) == synthetic.fingerprint
        assert json.loads(str(z["spec"])) == SMOKE.to_dict()
        assert z["train_indices"].dtype == np.int64
    m = split.manifest
    assert m["spec_hash"] == SMOKE.spec_hash() and m["dataset"]["official"] is False
    assert m["file"] == npz.name and "path" not in m["dataset"]["source"]
    assert sum(m["counts"]["train_observed"]) == split.num_train == sum(m["counts"]["train_clean"])


def test_tampered_file_is_reported_not_deleted(synthetic, tmp_path: Path) -> None:
    split = get_split(synthetic, SMOKE, tmp_path)
    npz = tmp_path / "synthetic" / f"{split.sha256}.npz"
    mpath = manifest_path(tmp_path, SMOKE, synthetic.fingerprint)
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        get_split(synthetic, SMOKE, tmp_path)
    assert str(npz) in str(e.value) and str(mpath) in str(e.value)
    assert "Delete both" in str(e.value) and "curvebench splits" in str(e.value)
    assert npz.exists() and mpath.exists()
    npz.unlink()
    with pytest.raises(DataError, match="missing"):
        load_split(mpath)


@pytest.mark.parametrize(("change", "advice"), [
    ({"imbalance_factor": 0.01}, "imbalance_factor=100"),
    ({"noise_rate": 1.0}, r"\[0, 1\)"),
    ({"noise_rate": -0.1}, r"\[0, 1\)"),
    ({"meta_per_class": 61}, "use meta_per_class <= 59"),
    ({"noise_model": "gaussian"}, "choose one of"),
    ({"imbalance_profile": "linear"}, "choose one of"),
    ({"order": "random"}, "choose one of"),
    ({"noise_model": "none", "noise_rate": 0.2}, "noise_rate 0"),
])  # fmt: skip
def test_bad_specs_raise_and_write_nothing(synthetic, tmp_path: Path, change: dict, advice: str) -> None:
    spec = dataclasses.replace(SMOKE, **change)
    with pytest.raises(DataError, match=advice):
        get_split(synthetic, spec, tmp_path / "splits")
    assert listing(tmp_path / "splits") == []


def test_meta_per_class_minus_one_is_for_image_folders_only() -> None:
    with pytest.raises(DataError, match="image-folder"):
        make_split(fake_cifar(10), SplitSpec("cifar10", meta_per_class=-1))


def test_concurrent_creation_is_harmless(synthetic, tmp_path: Path) -> None:
    results, errors = [], []

    def worker() -> None:
        try:
            results.append(get_split(synthetic, SMOKE, tmp_path).sha256)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert sorted(p.suffix for p in (tmp_path / "synthetic").iterdir()) == [".json", ".npz"]  # no temp files left
    load_split(manifest_path(tmp_path, SMOKE, synthetic.fingerprint))


def test_spec_from_config() -> None:
    cfg = OmegaConf.create({
        "dataset": dataset_cfg("cifar10"),
        "split": {"meta_per_class": None, "imbalance_profile": "exp", "imbalance_factor": 100,
                  "step_tail_fraction": 0.5, "noise_model": "unif_prior", "noise_rate": 0.4,
                  "order": "imbalance_noise", "data_seed": 0},
    })  # fmt: skip
    spec = spec_from_config(cfg)
    assert spec == SplitSpec("cifar10", 100, "exp", 100.0, 0.5, "unif_prior", 0.4, "imbalance_noise", 0)
    assert spec_from_config({"dataset": {"name": "digits", "meta_per_class": 10}, "split": {}}).meta_per_class == 10
    with pytest.raises(DataError, match="noise_type"):
        spec_from_config({"dataset": {"name": "digits"}, "split": {"noise_type": "sym"}})
    with pytest.raises(DataError, match="imbalance_factor=100"):
        spec_from_config({"dataset": {"name": "digits"}, "split": {"imbalance_factor": 0.01}})
    with pytest.raises(DataError, match="integer"):
        spec_from_config({"dataset": {"name": "digits"}, "split": {"data_seed": 1.5}})
