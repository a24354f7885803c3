"""The committed split lock: the smoke and digits suites must reproduce it exactly.

Until ``curvebench splits SUITE --update-lock`` is wired, regenerate the entries with
``PYTHONPATH=. python -m tests.test_data_lock``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from curvebench.data import LOCK_PATH, SplitSpec, build_splits
from tests.datahelpers import dataset_cfg


def suite_items() -> list[tuple[dict, SplitSpec]]:
    """The splits of the lead's ``smoke`` and ``digits`` suites."""
    smoke = [(dataset_cfg("synthetic"), SplitSpec("synthetic", meta_per_class=10, imbalance_factor=10,
                                                  noise_model="unif_prior", noise_rate=0.4, data_seed=0))]  # fmt: skip
    digits = [
        (dataset_cfg("digits"), SplitSpec("digits", meta_per_class=10, imbalance_factor=f,
                                          noise_model="unif_prior", noise_rate=p, data_seed=0))  # fmt: skip
        for f in (1, 10)
        for p in (0.0, 0.4)
    ]
    return smoke + digits


def test_committed_lock_matches(tmp_path: Path) -> None:
    table, ok = build_splits(suite_items(), tmp_path / "data", tmp_path / "splits", LOCK_PATH, check=True, update_lock=False)
    assert ok, table
    assert table.count(" ok") == len(suite_items())
    assert "synthetic-if10-unif_prior0.4-k10-d0" in table and "50/38/29/23/17/13/10/8/6/5" in table
    doc = json.loads(LOCK_PATH.read_text())
    assert "_about" in doc and "CIFAR" in doc["_about"]


def test_check_and_update_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock.json"
    items = suite_items()[:2]
    table, ok = build_splits(items, tmp_path / "data", tmp_path / "splits", lock, check=True, update_lock=False)
    assert not ok and "missing" in table and not lock.exists()
    table, ok = build_splits(items, tmp_path / "data", tmp_path / "splits", lock, check=False, update_lock=False)
    assert ok  # without --check a missing entry is only reported
    table, ok = build_splits(items, tmp_path / "data", tmp_path / "splits", lock, check=True, update_lock=True)
    assert ok and table.count("updated") == 2
    doc = json.loads(lock.read_text())
    key = items[0][1].spec_hash()
    assert doc[key]["tag"] == items[0][1].tag() and len(doc[key]["sha256"]) == 64
    doc[key]["sha256"] = "0" * 64
    lock.write_text(json.dumps(doc))
    table, ok = build_splits(items, tmp_path / "data", tmp_path / "splits", lock, check=True, update_lock=False)
    assert not ok and "DIFFERS" in table


def test_stale_stored_split_is_reported(tmp_path: Path) -> None:
    items = suite_items()[:1]
    build_splits(items, tmp_path / "data", tmp_path / "splits", LOCK_PATH, check=True)
    # Replace the stored split by another valid one under the same manifest name (as old code would have made).
    mpath = next((tmp_path / "splits" / "synthetic").glob("*.json"))
    other = SplitSpec("synthetic", meta_per_class=10, imbalance_factor=10, noise_model="unif_prior", noise_rate=0.2)
    build_splits([(items[0][0], other)], tmp_path / "data", tmp_path / "splits", tmp_path / "l.json")
    other_manifest = next(p for p in (tmp_path / "splits" / "synthetic").glob("*.json") if p != mpath)
    doc = json.loads(other_manifest.read_text())
    doc["spec"], doc["spec_hash"] = items[0][1].to_dict(), items[0][1].spec_hash()
    mpath.write_text(json.dumps(doc))
    table, ok = build_splits(items, tmp_path / "data", tmp_path / "splits", LOCK_PATH, check=True)
    assert not ok and "STALE" in table


if __name__ == "__main__":  # regenerate the committed lock entries
    with tempfile.TemporaryDirectory() as tmp:
        table, ok = build_splits(suite_items(), Path(tmp) / "data", Path(tmp) / "splits", LOCK_PATH, check=True, update_lock=True)
    print(table)
    sys.exit(0 if ok else 1)
