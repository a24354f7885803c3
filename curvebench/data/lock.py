"""``build_splits``: create a suite's splits and compare them with the lock file.

The lock (``curvebench/conf/splits.lock.json``) maps ``SplitSpec.spec_hash()`` to
``{"tag", "sha256", "fingerprint"}``: the sha256 of the split file that spec must produce from
the dataset with that fingerprint. A ``_about`` key holds its documentation. Regenerate entries
with ``curvebench splits SUITE --update-lock``; verify with ``--check``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from curvebench.data.cfgutil import as_dict
from curvebench.data.datasets import load_dataset
from curvebench.data.hashing import json_sha256
from curvebench.data.split import build_split
from curvebench.data.store import get_split
from curvebench.data.types import ImageArrays, ImageFiles, SplitSpec
from curvebench.io import atomic_write_bytes

LOCK_PATH = Path(__file__).resolve().parents[1] / "conf" / "splits.lock.json"
LOCK_ABOUT = (
    "sha256 of every locked split file, keyed by SplitSpec.spec_hash(); fingerprint = the dataset's. "
    "Check: `curvebench splits SUITE --check`; regenerate: `curvebench splits SUITE --update-lock`. "
    "Entries for the synthetic and digits splits are generated anywhere. CIFAR-10/100 entries need the "
    "official, md5-verified data and are still to be added on a machine that has it."
)


def read_lock(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        return {}
    entries = json.loads(path.read_text())
    return {k: v for k, v in entries.items() if not k.startswith("_")}


def write_lock(path: Path, entries: dict[str, Any]) -> None:
    doc = {"_about": LOCK_ABOUT, **{k: dict(sorted(v.items())) for k, v in sorted(entries.items())}}
    atomic_write_bytes(Path(path), (json.dumps(doc, indent=1) + "\n").encode())


def _compact(counts: list[int]) -> str:
    if len(counts) <= 10:
        return "/".join(str(c) for c in counts)
    return ",".join(map(str, counts[:3])) + ",...," + ",".join(map(str, counts[-2:])) + f" ({len(counts)} cls)"


def _differing_keys(stored: Any, fresh: Any, prefix: str = "") -> list[str]:
    """Dotted keys where a stored manifest differs from one recomputed from the data."""
    if isinstance(stored, dict) and isinstance(fresh, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(fresh)):
            out += _differing_keys(stored.get(key), fresh.get(key), f"{prefix}{key}.")
        return out
    return [] if stored == fresh else [prefix.rstrip(".")]


def build_splits(
    items: list[tuple[Any, SplitSpec]],
    data_root: Path,
    splits_dir: Path,
    lock_path: Path = LOCK_PATH,
    check: bool = False,
    update_lock: bool = False,
) -> tuple[str, bool]:
    """Create (or verify) every split; return a printable table and whether the check passed.

    Each stored split is also recomputed in memory, so a stored file that the current code would
    no longer produce is reported as ``STALE``. ``ok`` is False when ``check`` is set and any
    split is stale, differs from the lock or is missing from it (after ``update_lock`` wrote it,
    if both are set).
    """
    lock = read_lock(lock_path)
    cache: dict[str, ImageArrays | ImageFiles] = {}
    rows, bad, changed = [], False, False
    for dataset_cfg, spec in items:
        cfg = as_dict(dataset_cfg)
        key = json_sha256(cfg)
        if key not in cache:
            cache[key] = load_dataset(cfg, data_root)
        data = cache[key]
        split = get_split(data, spec, splits_dir)
        fresh = build_split(data, spec)[0]
        entry = lock.get(spec.spec_hash())
        edited = _differing_keys(split.manifest, fresh.manifest)
        if split.sha256 != fresh.sha256:
            status, bad = "STALE (stored file differs from a fresh one)", True
        elif edited:  # the file's hash is verified; its statistics live in the manifest only
            status, bad = f"DAMAGED manifest ({', '.join(edited)} differ from the split file)", True
        elif entry is not None and entry.get("sha256") == split.sha256:
            status = "ok"
        elif update_lock:
            lock[spec.spec_hash()] = {"tag": spec.tag(), "sha256": split.sha256, "fingerprint": data.fingerprint}
            status, changed = "updated", True
        else:
            status, bad = ("missing" if entry is None else "DIFFERS"), True
        noise = fresh.manifest.get("noise", {})  # statistics as recomputed, never as stored
        rows.append([
            spec.tag(),
            split.num_train,
            _compact(fresh.manifest["counts"]["train_clean"]),
            split.num_meta,
            noise.get("nominal_rate"),
            noise.get("realised_rate", noise.get("realised_rate_on_verified")),
            split.sha256[:12],
            status,
        ])  # fmt: skip
    if changed:
        write_lock(lock_path, lock)
    headers = ["split", "train", "per class (clean)", "meta", "p", "realised", "sha256", "lock"]
    table = tabulate(rows, headers=headers, floatfmt=".4f")
    return table, not (check and bad)
