"""Stored splits: content-addressed files plus JSON manifests.

Layout (one directory per dataset)::

    <splits_dir>/<dataset>/<sha256>.npz                                 the split (content-addressed)
    <splits_dir>/<dataset>/<tag>-<spec_hash[:8]>-<fingerprint[:8]>.json  its manifest

The .npz is written deterministically (stored members in name order, fixed dates), so the same
(dataset fingerprint, spec) gives a byte-identical file on every machine. It holds int64 arrays
``train_indices``, ``noisy_labels``, ``clean_labels``, ``meta_indices``, ``meta_labels`` and the
strings ``fingerprint`` and ``spec`` (canonical JSON). The manifest (sorted keys) holds the
spec, its hash, the dataset's name/official flag/fingerprint/source, counts per class, realised
noise rates and matrices, and the file's name and sha256. The manifest name includes the
dataset fingerprint, so a different copy of the data never picks up another copy's split.

Both files are written to temporary names and moved into place with ``os.replace``: processes
racing to create the same split write identical bytes, so the race is harmless.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from curvebench.data.hashing import file_digest
from curvebench.data.split import build_split, validate_spec
from curvebench.data.types import ImageArrays, ImageFiles, Split, SplitSpec
from curvebench.errors import DataError
from curvebench.io import atomic_write_bytes


def manifest_path(splits_dir: Path, spec: SplitSpec, fingerprint: str) -> Path:
    return Path(splits_dir) / spec.dataset / f"{spec.tag()}-{spec.spec_hash()[:8]}-{fingerprint[:8]}.json"


def _format(obj: Any, indent: int) -> str:
    """JSON with sorted keys; lists of scalars on one line, lists of lists one row per line."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(str(k))}: {_format(v, indent + 1)}" for k, v in sorted(obj.items())]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and obj and all(isinstance(x, (list, dict)) for x in obj):
        return "[\n" + ",\n".join(pad + _format(x, indent + 1) for x in obj) + "\n" + " " * indent + "]"
    return json.dumps(obj, sort_keys=True)


def manifest_text(manifest: dict[str, Any]) -> str:
    """Deterministic, readable JSON for a manifest."""
    return _format(manifest, 0) + "\n"


def _corrupt(manifest: Path, npz: Path, why: str) -> DataError:
    return DataError(
        f"stored split is damaged: {why}. Files: {manifest} and {npz}. Delete both and rerun "
        "`curvebench splits SUITE` (or the run) to recreate them; nothing is deleted automatically."
    )


def load_split(path: Path) -> Split:
    """Read a manifest and its .npz, verifying the file's sha256 against the manifest."""
    try:
        manifest = json.loads(Path(path).read_text())
        npz = Path(path).parent / manifest["file"]
        want = manifest["sha256"]
        spec = SplitSpec(**manifest["spec"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = f"unreadable manifest ({type(e).__name__}: {e})"
        raise _corrupt(Path(path), Path(path).with_suffix(".npz"), why) from None
    if not npz.is_file():
        raise _corrupt(path, npz, "the split file is missing")
    got = file_digest(npz)
    if got != want or npz.name != f"{want}.npz":
        raise _corrupt(path, npz, f"the file's sha256 is {got}, the manifest says {want}")
    if spec.spec_hash() != manifest.get("spec_hash"):
        raise _corrupt(path, npz, "the manifest's spec does not match its spec_hash")
    with np.load(npz, allow_pickle=False) as z:
        arrays = {key: z[key] for key in z.files}
    return Split(
        spec=spec,
        train_indices=arrays["train_indices"],
        noisy_labels=arrays["noisy_labels"],
        meta_indices=arrays["meta_indices"],
        meta_labels=arrays["meta_labels"],
        clean_labels=arrays["clean_labels"],
        manifest=manifest,
        sha256=want,
    )


def save_split(split: Split, blob: bytes, splits_dir: Path) -> Path:
    """Write the split's file and manifest; returns the manifest path."""
    fingerprint = split.manifest["dataset"]["fingerprint"]
    mpath = manifest_path(splits_dir, split.spec, fingerprint)
    atomic_write_bytes(mpath.parent / split.manifest["file"], blob)
    atomic_write_bytes(mpath, manifest_text(split.manifest).encode())
    return mpath


def get_split(data: ImageArrays | ImageFiles, spec: SplitSpec, splits_dir: Path) -> Split:
    """The stored split for (data, spec) if there is one (verified), else make and store it."""
    validate_spec(spec)
    mpath = manifest_path(splits_dir, spec, data.fingerprint)
    if mpath.exists():
        split = load_split(mpath)
        if split.manifest["dataset"]["fingerprint"] != data.fingerprint:
            why = "it was made from other data (fingerprint differs)"
            raise _corrupt(mpath, mpath.parent / split.manifest["file"], why)
        return split
    split, blob = build_split(data, spec)  # raises before anything is written
    save_split(split, blob, splits_dir)
    return split
