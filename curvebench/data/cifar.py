"""CIFAR-10 / CIFAR-100 from the official python pickles, md5-verified.

Layout under the data root (as extracted from the official archives)::

    cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    cifar-100-python/{train, test, meta}

With ``verify_md5`` (the default) every file must match the official md5 (torchvision's values)
and the dataset's fingerprint is derived from those md5s. With ``verify_md5: false`` any directory
in the same pickle format is read (a subset, one's own images, the synthetic generator's output):
``official`` is then False and the fingerprint is a sha256 of the arrays.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curvebench.data import py2pickle
from curvebench.data.hashing import md5, release_fingerprint
from curvebench.data.types import ImageArrays
from curvebench.errors import DataError


@dataclass(frozen=True)
class CifarRelease:
    """File names and checksums of one official release."""

    name: str
    num_classes: int
    directory: str
    archive: str
    archive_md5: str
    url: str
    train_files: tuple[tuple[str, str], ...]
    test_files: tuple[tuple[str, str], ...]
    meta_file: tuple[str, str]
    label_key: str
    names_key: str

    @property
    def all_files(self) -> tuple[tuple[str, str], ...]:
        return self.train_files + self.test_files + (self.meta_file,)


CIFAR10 = CifarRelease(
    name="cifar10",
    num_classes=10,
    directory="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    train_files=(
        ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
        ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
        ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
        ("data_batch_4", "634d18415352ddfa80567beed471001a"),
        ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    ),
    test_files=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
    meta_file=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    label_key="labels",
    names_key="label_names",
)

CIFAR100 = CifarRelease(
    name="cifar100",
    num_classes=100,
    directory="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    train_files=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
    test_files=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
    meta_file=("meta", "7973b15100ade9c7d40fb424638fde48"),
    label_key="fine_labels",
    names_key="fine_label_names",
)

RELEASES = {10: CIFAR10, 100: CIFAR100}

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _to_nhwc(data: np.ndarray, path: Path) -> np.ndarray:
    """Rows of R, G, B planes (the CIFAR layout) -> uint8 [N, H, W, 3]."""
    n, row = data.shape
    side = int(round((row // 3) ** 0.5))
    if data.dtype != np.uint8 or row != 3 * side * side:
        raise DataError(f"{path}: 'data' must be uint8 rows of 3*S*S values, got {data.dtype} {data.shape}")
    return np.ascontiguousarray(data.reshape(n, 3, side, side).transpose(0, 2, 3, 1))


def _read_batches(directory: Path, files: tuple[tuple[str, str], ...], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for fname, _ in files:
        path = directory / fname
        try:
            entry = py2pickle.load(path)
            images.append(_to_nhwc(np.asarray(entry["data"]), path))
            labels.append(np.asarray(entry[label_key], dtype=np.int64))
        except (KeyError, ValueError, EOFError, TypeError, pickle.UnpicklingError) as e:
            raise DataError(
                f"{path} is not a CIFAR python pickle ({type(e).__name__}: {e}); "
                "re-extract it from the official archive"
            ) from None
    return np.concatenate(images), np.concatenate(labels)


def _how_to_get(release: CifarRelease, data_root: Path) -> str:
    return (
        f"Put {release.archive} (md5 {release.archive_md5}, from {release.url}) in {data_root}/ "
        f"and extract it there (tar xzf {release.archive}; a tarball left in {data_root}/ is also "
        "extracted on first use), or set dataset.download=true."
    )


def _missing_message(release: CifarRelease, data_root: Path, missing: list[str]) -> str:
    where = data_root / release.directory
    if not missing:
        files = ", ".join(f for f, _ in release.all_files)
        return f"{release.name} not found: expected the directory {where}/ holding {files}. " + _how_to_get(
            release, data_root
        )
    return f"{release.name}: {where}/ lacks {', '.join(missing)}. " + _how_to_get(release, data_root)


def read_cifar(directory: Path, release: CifarRelease, *, verify_md5: bool, name: str | None = None) -> ImageArrays:
    """Read an extracted CIFAR directory; checks every file's md5 when ``verify_md5``."""
    checksums: dict[str, str] = {}
    if verify_md5:
        for fname, want in release.all_files:
            got = md5(directory / fname)
            if got != want:
                raise DataError(
                    f"{directory / fname} has md5 {got}, but the official {release.name} file has {want}: "
                    f"the copy is damaged or not the official release. Re-extract {release.archive} "
                    f"(md5 {release.archive_md5}), or set dataset.verify_md5=false to use it as an "
                    "unofficial copy (its splits are then fingerprinted by content and marked official: false)."
                )
            checksums[fname] = got
    train_x, train_y = _read_batches(directory, release.train_files, release.label_key)
    test_x, test_y = _read_batches(directory, release.test_files, release.label_key)
    k = release.num_classes
    for what, y in (("training", train_y), ("test", test_y)):
        if y.size and (y.min() < 0 or y.max() >= k):
            raise DataError(f"{directory}: {what} labels must lie in 0..{k - 1}, found {y.min()}..{y.max()}")
    names: tuple[str, ...] = tuple(str(i) for i in range(k))
    meta_path = directory / release.meta_file[0]
    if meta_path.exists():
        meta = py2pickle.load(meta_path)
        if len(meta.get(release.names_key, ())) == k:
            names = tuple(str(n) for n in meta[release.names_key])
    fingerprint, source = release_fingerprint(release.name, "md5", checksums, verify_md5, directory, "cifar-python",
                                              train_x, train_y, test_x, test_y)
    return ImageArrays(
        name=name or release.name,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=k,
        class_names=names,
        fingerprint=fingerprint,
        official=verify_md5,
        source=source,
    )


def download(url: str, dest: Path, expected_md5: str | None) -> None:
    """Fetch ``url`` (http(s) or file://) to ``dest`` atomically, checking its md5."""
    import hashlib

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    h = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if expected_md5 and h.hexdigest() != expected_md5:
            raise DataError(
                f"the download from {url} has md5 {h.hexdigest()}, expected {expected_md5}; "
                f"retry, or fetch it by hand and put it at {dest}"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"could not download {url} ({e}); fetch it by hand and put it at {dest}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def extract(archive: Path, member_dir: str, data_root: Path) -> None:
    """Extract ``member_dir`` from a tar archive into ``data_root``, atomically."""
    tmp = Path(tempfile.mkdtemp(dir=data_root, prefix=".extract-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / member_dir).is_dir():
            raise DataError(f"{archive} does not contain {member_dir}/; is it the right archive?")
        try:
            os.replace(tmp / member_dir, data_root / member_dir)
        except OSError:
            if not (data_root / member_dir).is_dir():  # not a lost race with another process
                raise
    except tarfile.TarError as e:
        raise DataError(f"{archive} is not a readable tar archive ({e}); delete it and fetch it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_cifar(
    release: CifarRelease,
    data_root: Path,
    *,
    download_ok: bool,
    url: str | None = None,
    archive_md5: str | None = None,
) -> Path:
    """Return the extracted directory, extracting or downloading the archive when needed."""
    directory = data_root / release.directory
    if directory.is_dir():
        return directory
    archive = data_root / release.archive
    if not archive.exists():
        if not download_ok:
            raise DataError(_missing_message(release, data_root, []))
        download(url or release.url, archive, archive_md5)
    elif archive_md5 and md5(archive) != archive_md5:
        raise DataError(
            f"{archive} has md5 {md5(archive)}, expected {archive_md5}: delete it and fetch it again "
            "(or set dataset.archive_md5=null to accept an unofficial archive)"
        )
    extract(archive, release.directory, data_root)
    return directory


def load_cifar(cfg: dict[str, Any], data_root: Path, release: CifarRelease) -> ImageArrays:
    """Dataset loader for the ``cifar10`` / ``cifar100`` configs."""
    verify = bool(cfg.get("verify_md5", True))
    archive_md5 = cfg.get("archive_md5", release.archive_md5 if verify else None)
    directory = ensure_cifar(
        release,
        Path(data_root),
        download_ok=bool(cfg.get("download", False)),
        url=cfg.get("url"),
        archive_md5=archive_md5,
    )
    required = [f for f, _ in (release.all_files if verify else release.train_files + release.test_files)]
    missing = [f for f in required if not (directory / f).is_file()]
    if missing:
        raise DataError(_missing_message(release, Path(data_root), missing))
    return read_cifar(directory, release, verify_md5=verify, name=str(cfg.get("name", release.name)))
