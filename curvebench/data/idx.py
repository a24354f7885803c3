"""Fashion-MNIST from its four IDX files (gzipped or not), sha256-verified on the decompressed bytes.

Searched, in order: ``dataset.path`` when set, ``<data root>/fashion-mnist/`` and the Debian
package's ``/usr/share/datasets/fashion-mnist/`` (``apt-get install dataset-fashion-mnist``). Each
file may be stored as ``NAME`` or ``NAME.gz``. The ``.gz`` files of Debian's package are not
byte-identical to the upstream release's, so the checksums pin the decompressed content: every
copy of the official data (upstream or Debian, compressed or not) has the same fingerprint and
hence the same splits. ``dataset.download=true`` fetches the upstream ``.gz`` files into
``<data root>/fashion-mnist/`` when no copy is found.

IDX format: a big-endian header (two zero bytes, a type code, the number of dimensions, then one
int32 per dimension) followed by the values; the type code must be 0x08 (uint8).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curvebench.data.cifar import download
from curvebench.data.hashing import release_fingerprint
from curvebench.data.types import ImageArrays
from curvebench.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DIRECTORY = "fashion-mnist"
UPSTREAM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
IDX_UINT8 = 0x08


@dataclass(frozen=True)
class IdxFile:
    """One file of the release: its name, the sha256 and size of its decompressed bytes, its shape."""

    name: str
    sha256: str
    size: int
    shape: tuple[int, ...]


FMNIST_FILES = (
    IdxFile("train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            47_040_016, (60_000, 28, 28)),
    IdxFile("train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            60_008, (60_000,)),
    IdxFile("t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            7_840_016, (10_000, 28, 28)),
    IdxFile("t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            10_008, (10_000,)),
)

FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _how_to_get(data_root: Path) -> str:
    return (
        f"Install it with `apt-get install {DEBIAN_PACKAGE}` (files under {DEBIAN_DIR}/), or put the four "
        f"IDX files (gzipped or not, from {UPSTREAM_URL}) in {data_root / DIRECTORY}/, or set dataset.download=true."
    )


def file_path(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, whichever exists (the plain file first)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_bytes(path: Path) -> bytes:
    """The decompressed content of an IDX file (gzip is recognised by its magic number)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                return g.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path} is not a readable gzip file ({type(e).__name__}: {e}); delete it and fetch it again") from None


def parse_idx(blob: bytes, path: Path) -> np.ndarray:
    """The uint8 array an IDX file holds; a bad header or a wrong length is a DataError."""
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {blob[:4].hex() or 'empty'}); fetch it again")
    dtype, ndim = blob[2], blob[3]
    if dtype != IDX_UINT8:
        raise DataError(f"{path}: IDX type code 0x{dtype:02x}, expected 0x08 (uint8); is it a Fashion-MNIST file?")
    header = 4 + 4 * ndim
    if ndim == 0 or len(blob) < header:
        raise DataError(f"{path}: truncated IDX header ({len(blob)} bytes, {ndim} dimensions); fetch it again")
    shape = tuple(int(d) for d in np.frombuffer(blob, dtype=">i4", count=ndim, offset=4))
    want = header + int(np.prod(shape))
    if len(blob) != want:
        what = "truncated" if len(blob) < want else "has trailing bytes"
        raise DataError(f"{path} is {what}: {len(blob)} bytes, shape {shape} needs {want}; fetch it again")
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file, gzipped or not."""
    return parse_idx(read_bytes(Path(path)), Path(path))


def find_directory(cfg: dict[str, Any], data_root: Path) -> Path | None:
    """The first candidate directory that holds any of the files (None: no copy found)."""
    candidates = [Path(cfg["path"])] if cfg.get("path") else [data_root / DIRECTORY, DEBIAN_DIR]
    for directory in candidates:
        if any(file_path(directory, f.name) for f in FMNIST_FILES):
            return directory
    return None


def fetch_fmnist(directory: Path, base_url: str) -> None:
    """Download the upstream .gz files that ``directory`` lacks (their content is verified on read)."""
    for f in FMNIST_FILES:
        if file_path(directory, f.name) is None:
            download(f"{base_url.rstrip('/')}/{f.name}.gz", directory / f"{f.name}.gz", None)


def load_fmnist(cfg: dict[str, Any], data_root: Path) -> ImageArrays:
    """Dataset loader for the ``fmnist`` config: uint8 [N, 28, 28, 1] images, the official 60k/10k sets."""
    data_root = Path(data_root)
    verify = bool(cfg.get("verify_sha256", True))
    directory = find_directory(cfg, data_root)
    if directory is None:
        if not cfg.get("download", False):
            where = cfg.get("path") or f"{data_root / DIRECTORY}/ or {DEBIAN_DIR}/"
            raise DataError(f"Fashion-MNIST not found in {where}. " + _how_to_get(data_root))
        directory = Path(cfg["path"]) if cfg.get("path") else data_root / DIRECTORY
        fetch_fmnist(directory, str(cfg.get("url") or UPSTREAM_URL))
    paths = {}
    for f in FMNIST_FILES:
        path = file_path(directory, f.name)
        if path is None:
            raise DataError(f"Fashion-MNIST: {directory}/ lacks {f.name}(.gz). " + _how_to_get(data_root))
        paths[f.name] = path
    stats = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths.values())
    key = (stats, verify, str(cfg.get("name", "fmnist")))
    if _CACHE.get("key") == key:  # a worker runs many runs in one process: decompress and verify once
        return _CACHE["data"]
    data = _read_release(directory, paths, verify, key[2], data_root)
    _CACHE.clear()
    _CACHE.update(key=key, data=data)
    return data


_CACHE: dict[str, Any] = {}


def _read_release(directory: Path, paths: dict[str, Path], verify: bool, name: str, data_root: Path) -> ImageArrays:
    arrays, checksums = {}, {}
    for f in FMNIST_FILES:
        path = paths[f.name]
        blob = read_bytes(path)
        got = hashlib.sha256(blob).hexdigest()
        if verify and got != f.sha256:
            raise DataError(
                f"{path} decompresses to {len(blob)} bytes with sha256 {got}, but the official {f.name} has "
                f"{f.size} bytes and sha256 {f.sha256}: the copy is damaged or not the official release. "
                f"Reinstall it (`apt-get install --reinstall {DEBIAN_PACKAGE}`) or fetch it again, or set "
                "dataset.verify_sha256=false to use it as an unofficial copy (splits marked official: false)."
            )
        arrays[f.name] = parse_idx(blob, path)
        checksums[f.name] = got
    train_x, train_y, test_x, test_y = (arrays[f.name] for f in FMNIST_FILES)
    for what, x, y in (("training", train_x, train_y), ("test", test_x, test_y)):
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(f"{directory}: {what} images {x.shape} and labels {y.shape} do not match")
        if y.size and y.max() >= len(FMNIST_CLASSES):
            raise DataError(f"{directory}: {what} labels must lie in 0..9, found a {y.max()}")
    train_x, test_x = np.array(train_x[..., None]), np.array(test_x[..., None])  # writable copies
    train_y, test_y = train_y.astype(np.int64), test_y.astype(np.int64)
    fingerprint, source = release_fingerprint("fashion-mnist", "sha256", checksums, verify, directory, "idx",
                                              train_x, train_y, test_x, test_y)
    return ImageArrays(
        name=name,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=len(FMNIST_CLASSES),
        class_names=FMNIST_CLASSES,
        fingerprint=fingerprint,
        official=verify,
        source=source,
    )
