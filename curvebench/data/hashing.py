"""Checksums and fingerprints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

_CHUNK = 1 << 20


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def md5(path: Path) -> str:
    return file_digest(path, "md5")


def json_sha256(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def arrays_sha256(*arrays: np.ndarray) -> str:
    """sha256 over the dtype, shape and bytes of each array, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def release_fingerprint(release: str, digest: str, checksums: dict[str, str], verified: bool, directory: Path,
                        fmt: str, *arrays: np.ndarray) -> tuple[str, dict[str, Any]]:
    """(fingerprint, source) of a dataset read from an official release's files.

    Verified against the official checksums (``digest``: "md5" | "sha256"), the fingerprint is the
    release name and those checksums, the same on every machine; unverified, it is the content of the
    arrays. ``source`` says where and how the data was read (and the checksums when verified).
    """
    if verified:
        fingerprint = json_sha256({"release": release, digest: checksums})
    else:
        fingerprint = arrays_sha256(*arrays)
    source: dict[str, Any] = {"path": str(directory), "format": fmt, f"{digest}_verified": verified}
    if verified:
        source[digest] = checksums
    return fingerprint, source
