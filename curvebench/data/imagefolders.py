"""Real-noise datasets read as file lists: Clothing1M, Food-101N, ANIMAL-10N.

None of them can be downloaded automatically, and none publishes checksums: the readers read the
official list/annotation files only (no image is opened), ``official`` is False, and the
fingerprint is a sha256 of those list files (ANIMAL-10N: of the sorted file names). Layouts, all
under the data root:

Clothing1M (``dir: clothing1M``; annotation files in it or in its ``annotations/``)::

    category_names_eng.txt  noisy_label_kv.txt  clean_label_kv.txt  noisy_train_key_list.txt
    clean_train_key_list.txt  clean_val_key_list.txt  clean_test_key_list.txt  images/0..9/...

  Train: ``noisy_train_key_list`` with noisy labels; declared clean set (meta): the
  ``meta_list`` key list (default ``clean_val``) with clean labels; test: ``clean_test``. Keys
  of the clean set and the test set are removed from the training list.

Food-101N (``dir: Food-101N_release``; test set from Food-101, ``test_dir: food-101``)::

    Food-101N_release/meta/{classes.txt, imagelist.tsv, verified_train.tsv, verified_val.tsv}
    Food-101N_release/images/<class>/<key>.jpg
    food-101/meta/test.txt  food-101/images/<class>/<id>.jpg

  Train: every image of ``imagelist.tsv``, labelled by its class folder; declared clean set:
  the images of ``meta_list`` (default ``verified_val``) whose verification label is 1, removed
  from the training list; the other verified file gives diagnostic clean labels (verification 1:
  the folder label is right). Test: Food-101's ``test.txt``.

ANIMAL-10N (``dir: ANIMAL-10N``)::

    training/<label>_<id>.jpg  testing/<label>_<id>.jpg

  The label is the number before the first underscore. There is no clean subset.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from curvebench.data.hashing import file_digest, json_sha256
from curvebench.data.types import ImageFiles
from curvebench.errors import DataError

CLOTHING1M_CLASSES = (
    "T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
    "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear",
)  # fmt: skip
ANIMAL10N_CLASSES = (
    "cat", "lynx", "wolf", "coyote", "cheetah", "jaguar", "chimpanzee", "orangutan", "hamster", "guinea pig",
)  # fmt: skip


def _labels(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _check_files(name: str, where: Path, files: list[Path], how: str) -> None:
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DataError(f"{name}: missing {', '.join(missing)}. {how}")


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


def _kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for ln in _lines(path):
        key, value = ln.split()
        out[key] = int(value)
    return out


def _fingerprint(files: list[Path], base: Path) -> str:
    return json_sha256({str(p.relative_to(base)): file_digest(p) for p in files})


def _labelled(keys: list[str], labels: dict[str, int], what: str) -> list[int]:
    missing = [k for k in keys if k not in labels]
    if missing:
        raise DataError(f"{what}: {len(missing)} keys have no label (first: {missing[0]}); the list files disagree")
    return [labels[k] for k in keys]


def load_clothing1m(cfg: dict[str, Any], data_root: Path) -> ImageFiles:
    root = (Path(data_root) / str(cfg.get("dir", "clothing1M"))).resolve()
    ann = root if (root / "noisy_label_kv.txt").is_file() else root / "annotations"
    meta_list = str(cfg.get("meta_list", "clean_val"))
    names = ["noisy_label_kv", "clean_label_kv", "noisy_train_key_list", f"{meta_list}_key_list", "clean_test_key_list"]
    files = [ann / f"{n}.txt" for n in names]
    _check_files(
        "clothing1m", root, files,
        f"Clothing1M cannot be downloaded automatically: request it from its authors "
        f"(https://github.com/Cysu/noisy_label), untar the images into {root}/images and put the "
        f"annotation files in {root}/.",
    )  # fmt: skip
    noisy_kv, clean_kv = _kv(files[0]), _kv(files[1])
    meta_keys, test_keys = _lines(files[3]), _lines(files[4])
    held_out = set(meta_keys) | set(test_keys)
    noisy_keys = _lines(files[2])
    train_keys = [k for k in noisy_keys if k not in held_out]
    names_file = ann / "category_names_eng.txt"
    class_names = tuple(_lines(names_file)) if names_file.is_file() else CLOTHING1M_CLASSES
    return ImageFiles(
        name=str(cfg.get("name", "clothing1m")),
        root=str(root),
        train_files=tuple(train_keys),
        train_labels=_labels(_labelled(train_keys, noisy_kv, "noisy_train_key_list")),
        test_files=tuple(test_keys),
        test_labels=_labels(_labelled(test_keys, clean_kv, "clean_test_key_list")),
        num_classes=len(class_names),
        class_names=class_names,
        fingerprint=_fingerprint(files, root),
        official=False,
        meta_files=tuple(meta_keys),
        meta_labels=_labels(_labelled(meta_keys, clean_kv, f"{meta_list}_key_list")),
        train_clean_labels=_labels([clean_kv.get(k, -1) for k in train_keys]),
        source={
            "format": "clothing1m",
            "path": str(root),
            "meta_list": meta_list,
            "removed_from_train": len(noisy_keys) - len(train_keys),
        },
    )


def _tsv(path: Path) -> list[list[str]]:
    rows = [ln.split("\t") for ln in _lines(path)]
    return rows[1:] if rows and rows[0][0].startswith("class_name") else rows


def load_food101n(cfg: dict[str, Any], data_root: Path) -> ImageFiles:
    data_root = Path(data_root).resolve()
    ndir, tdir = str(cfg.get("dir", "Food-101N_release")), str(cfg.get("test_dir", "food-101"))
    meta_list = str(cfg.get("meta_list", "verified_val"))
    other = {"verified_val": "verified_train", "verified_train": "verified_val"}.get(meta_list)
    if other is None:
        raise DataError(f"food101n: meta_list must be verified_val or verified_train, not {meta_list!r}")
    meta = data_root / ndir / "meta"
    files = [meta / "classes.txt", meta / "imagelist.tsv", meta / f"{meta_list}.tsv", meta / f"{other}.tsv",
             data_root / tdir / "meta" / "test.txt"]  # fmt: skip
    _check_files(
        "food101n", data_root, files,
        f"Get Food-101N (https://kuanghuei.github.io/Food-101N/) and Food-101 "
        f"(https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/) and extract both in {data_root}/ "
        f"({ndir}/ and {tdir}/).",
    )  # fmt: skip
    class_names = tuple(c for c in _lines(files[0]) if c != "class_name")
    index = {c: i for i, c in enumerate(class_names)}

    def label(key: str, where: Path) -> int:
        cls = key.split("/", 1)[0]
        if cls not in index:
            raise DataError(f"{where}: class {cls!r} of {key!r} is not in {files[0]}")
        return index[cls]

    verified_meta = {row[0] for row in _tsv(files[2]) if len(row) > 1 and row[1].strip() == "1"}
    verified_other = {row[0]: row[1].strip() == "1" for row in _tsv(files[3]) if len(row) > 1}
    all_keys = [row[0] for row in _tsv(files[1])]
    train_keys = [k for k in all_keys if k not in verified_meta]
    meta_keys = [k for k in all_keys if k in verified_meta]
    train_labels = [label(k, files[1]) for k in train_keys]
    test_keys = _lines(files[4])
    return ImageFiles(
        name=str(cfg.get("name", "food101n")),
        root=str(data_root),
        train_files=tuple(f"{ndir}/images/{k}" for k in train_keys),
        train_labels=_labels(train_labels),
        test_files=tuple(f"{tdir}/images/{k}.jpg" for k in test_keys),
        test_labels=_labels([label(k, files[4]) for k in test_keys]),
        num_classes=len(class_names),
        class_names=class_names,
        fingerprint=_fingerprint(files, data_root),
        official=False,
        meta_files=tuple(f"{ndir}/images/{k}" for k in meta_keys),
        meta_labels=_labels([label(k, files[2]) for k in meta_keys]),
        train_clean_labels=_labels(
            [y if verified_other.get(k, False) else -1 for k, y in zip(train_keys, train_labels)]
        ),
        source={"format": "food101n", "path": str(data_root), "meta_list": meta_list},
    )


_ANIMAL_NAME = re.compile(r"^(\d+)_.+\.(jpe?g|png)$", re.IGNORECASE)


def _animal_dir(directory: Path) -> tuple[list[str], list[int]]:
    names, labels = [], []
    for name in sorted(p.name for p in directory.iterdir() if p.is_file()):
        m = _ANIMAL_NAME.match(name)
        if m is None:
            raise DataError(f"{directory / name}: ANIMAL-10N file names are <label>_<id>.jpg")
        names.append(f"{directory.name}/{name}")
        labels.append(int(m.group(1)))
    return names, labels


def load_animal10n(cfg: dict[str, Any], data_root: Path) -> ImageFiles:
    root = (Path(data_root) / str(cfg.get("dir", "ANIMAL-10N"))).resolve()
    missing = [d for d in ("training", "testing") if not (root / d).is_dir()]
    if missing:
        raise DataError(
            f"animal10n: missing {', '.join(str(root / d) + '/' for d in missing)}. Get ANIMAL-10N "
            f"(https://dm.kaist.ac.kr/datasets/animal-10n/) and extract training/ and testing/ into {root}/."
        )
    train_files, train_labels = _animal_dir(root / "training")
    test_files, test_labels = _animal_dir(root / "testing")
    class_names = tuple(cfg.get("class_names") or ANIMAL10N_CLASSES)
    k = len(class_names)
    if max(train_labels + test_labels, default=0) >= k:
        raise DataError(f"animal10n: labels must lie in 0..{k - 1}; check the file names under {root}")
    return ImageFiles(
        name=str(cfg.get("name", "animal10n")),
        root=str(root),
        train_files=tuple(train_files),
        train_labels=_labels(train_labels),
        test_files=tuple(test_files),
        test_labels=_labels(test_labels),
        num_classes=k,
        class_names=class_names,
        fingerprint=json_sha256({"train": train_files, "test": test_files}),
        official=False,
        source={"format": "animal10n", "path": str(root)},
    )
