"""Image-folder readers (Clothing1M, Food-101N, ANIMAL-10N) on tiny fake trees in the real layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curvebench.data import ImageFiles, SplitSpec, get_split, load_dataset, make_split
from curvebench.errors import DataError
from tests.datahelpers import dataset_cfg, listing


def _jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), (shade, 255 - shade, 40)).save(path, format="JPEG")


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{ln}\n" for ln in lines))


def _files_exist(data: ImageFiles) -> bool:
    root = Path(data.root)
    return all((root / f).is_file() for f in data.train_files + data.meta_files + data.test_files)


def _clothing_tree(root: Path, annotations: str = "") -> None:
    keys = [f"images/{i % 2}/0{i}/{1000 + i}.jpg" for i in range(10)]
    for i, k in enumerate(keys):
        _jpeg(root / k, 20 * i)
    ann = root / annotations
    _write(ann / "category_names_eng.txt", ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
                                            "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"])  # fmt: skip
    _write(ann / "noisy_label_kv.txt", [f"{k} {i % 14}" for i, k in enumerate(keys[:7])])
    _write(ann / "clean_label_kv.txt", [f"{k} {(i + 1) % 2}" for i, k in enumerate(keys[5:], start=5)] + [f"{keys[0]} 3"])
    _write(ann / "noisy_train_key_list.txt", keys[:7])  # keys[5], keys[6] are also in the clean set
    _write(ann / "clean_train_key_list.txt", keys[:1])
    _write(ann / "clean_val_key_list.txt", keys[5:8])  # keys[5], keys[6] overlap the noisy list
    _write(ann / "clean_test_key_list.txt", keys[8:])


@pytest.mark.parametrize("annotations", ["", "annotations"])
def test_clothing1m(tmp_path: Path, annotations: str) -> None:
    _clothing_tree(tmp_path / "clothing1M", annotations)
    data = load_dataset(dataset_cfg("clothing1m"), tmp_path)
    assert isinstance(data, ImageFiles) and data.num_classes == 14 and data.class_names[0] == "T-Shirt"
    assert len(data.train_files) == 5 and data.source["removed_from_train"] == 2
    assert not set(data.train_files) & set(data.meta_files) and not set(data.train_files) & set(data.test_files)
    assert data.train_labels.tolist() == [0, 1, 2, 3, 4]
    assert data.train_clean_labels.tolist() == [3, -1, -1, -1, -1]
    assert data.meta_labels.tolist() == [0, 1, 0] and data.test_labels.tolist() == [1, 0]
    assert _files_exist(data) and data.official is False
    split = make_split(data, SplitSpec("clothing1m", meta_per_class=-1, imbalance_profile="none"))
    assert split.num_meta == 3 and split.manifest["meta_source"] == "meta_files" and split.num_train == 5
    with pytest.raises(DataError, match="class 2 .Knitwear.; use a smaller k, or -1"):
        make_split(data, SplitSpec("clothing1m", meta_per_class=1, imbalance_profile="none"))  # classes 2.. absent

def test_clothing1m_fingerprint_follows_the_lists(tmp_path: Path) -> None:
    _clothing_tree(tmp_path / "clothing1M")
    a = load_dataset(dataset_cfg("clothing1m"), tmp_path)
    (tmp_path / "clothing1M" / "clean_test_key_list.txt").write_text("images/0/08/1008.jpg\n")
    b = load_dataset(dataset_cfg("clothing1m"), tmp_path)
    assert a.fingerprint != b.fingerprint and len(b.test_files) == 1


def _food_tree(root: Path) -> None:
    classes = ["apple_pie", "baby_back_ribs", "baklava"]
    keys = [f"{c}/{c[:3]}{i:03d}.jpg" for c in classes for i in range(4)]
    for i, k in enumerate(keys):
        _jpeg(root / "Food-101N_release" / "images" / k, 15 * i)
    meta = root / "Food-101N_release" / "meta"
    _write(meta / "classes.txt", ["class_name", *classes])
    _write(meta / "imagelist.tsv", ["class_name/key", *keys])
    _write(meta / "verified_train.tsv", ["class_name/key\tverification_label", f"{keys[1]}\t1", f"{keys[2]}\t0"])
    _write(meta / "verified_val.tsv", ["class_name/key\tverification_label", f"{keys[0]}\t1", f"{keys[4]}\t1",
                                       f"{keys[5]}\t0", f"{keys[8]}\t1"])  # fmt: skip
    tests = [f"{c}/{100 + i}" for i, c in enumerate(classes)]
    for i, t in enumerate(tests):
        _jpeg(root / "food-101" / "images" / f"{t}.jpg", 60 * i)
    _write(root / "food-101" / "meta" / "test.txt", tests)


def test_food101n(tmp_path: Path) -> None:
    _food_tree(tmp_path)
    data = load_dataset({**dataset_cfg("food101n"), "num_classes": 3}, tmp_path)
    assert data.class_names == ("apple_pie", "baby_back_ribs", "baklava")
    assert len(data.meta_files) == 3 and data.meta_labels.tolist() == [0, 1, 2]  # verified_val positives
    assert len(data.train_files) == 9 and not set(data.train_files) & set(data.meta_files)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.train_clean_labels.tolist()[:2] == [0, -1]  # verified_train: 1 -> clean, 0 -> unknown
    assert data.test_labels.tolist() == [0, 1, 2] and data.test_files[0] == "food-101/images/apple_pie/100.jpg"
    assert _files_exist(data)
    split = get_split(data, SplitSpec("food101n", meta_per_class=1, imbalance_profile="none"), tmp_path / "splits")
    assert split.num_meta == 3 and np.bincount(split.meta_labels).tolist() == [1, 1, 1]
    assert split.manifest["noise"]["verified_train"] == 1
    with pytest.raises(DataError, match="too large"):
        make_split(data, SplitSpec("food101n", meta_per_class=2, imbalance_profile="none"))


def test_animal10n(tmp_path: Path) -> None:
    root = tmp_path / "ANIMAL-10N"
    for i in range(12):
        _jpeg(root / "training" / f"{i % 10}_{i:05d}.jpg", 10 * i)
    for i in range(3):
        _jpeg(root / "testing" / f"{i}_{50000 + i:05d}.jpg", 50 * i)
    data = load_dataset(dataset_cfg("animal10n"), tmp_path)
    assert data.class_names[:2] == ("cat", "lynx") and data.num_classes == 10
    assert len(data.train_files) == 12 and data.train_files[0] == "training/0_00000.jpg"
    assert sorted(data.train_labels.tolist()) == sorted(i % 10 for i in range(12))
    assert data.test_labels.tolist() == [0, 1, 2] and data.meta_files == () and _files_exist(data)
    split = make_split(data, SplitSpec("animal10n", meta_per_class=0, imbalance_profile="none"))
    assert split.num_train == 12 and split.num_meta == 0
    with pytest.raises(DataError, match="no declared clean subset"):
        make_split(data, SplitSpec("animal10n", meta_per_class=5, imbalance_profile="none"))
    (root / "training" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="<label>_<id>"):
        load_dataset(dataset_cfg("animal10n"), tmp_path)


@pytest.mark.parametrize("name", ["clothing1m", "food101n", "animal10n"])
def test_missing_image_folder_data(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="missing") as e:
        load_dataset(dataset_cfg(name), tmp_path)
    assert str(tmp_path) in str(e.value)
    assert listing(tmp_path) == []


def test_real_noise_datasets_take_no_synthetic_noise(tmp_path: Path) -> None:
    _clothing_tree(tmp_path / "clothing1M")
    data = load_dataset(dataset_cfg("clothing1m"), tmp_path)
    with pytest.raises(DataError, match="real-world label noise"):
        make_split(data, SplitSpec("clothing1m", meta_per_class=0, imbalance_profile="none", noise_model="sym", noise_rate=0.2))
