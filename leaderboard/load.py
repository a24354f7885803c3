"""Read run records (``result.json``, ``failed.json``) under a results directory into a DataFrame.

Only those two file names are read (earlier failures kept as ``failed-N.json`` after a retry are
not). A file that is not valid JSON or does not follow the record schema is reported by its path
and skipped; it never stops the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from curvebench.engine.hardware import stack_label
from curvebench.engine.records import validate_record
from curvebench.engine.rundir import RECORD_FILES
from curvebench.errors import RecordError
from curvebench.suites import grid_value

MISSING = object()  # a config key the record does not have

# runs.csv columns, in order (plus `tables`, filled in by the report)
RUN_COLUMNS = [
    "path", "status", "suite", "dataset", "method", "model", "recipe", "epochs", "imbalance_profile",
    "imbalance_factor", "noise_model", "noise_rate", "order", "meta_per_class", "data_seed", "seed",
    "top1_best", "top1_last", "best_epoch", "epochs_run", "shot_many_last", "shot_medium_last", "shot_few_last",
    "realized_noise_rate", "num_train", "num_meta", "official", "config_hash", "split_sha256", "git_sha",
    "git_dirty", "harness_version", "torch", "cuda", "device", "device_name", "cpu_model", "cpu_isa", "mkl", "onednn",
    "hardware", "wall_time_s", "finished", "failure_phase", "failure_epoch", "failure_cause",
]


@dataclass
class Runs:
    """Every readable record under ``root``: one DataFrame row per file, plus the records themselves."""

    root: Path
    frame: pd.DataFrame
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # path (relative to root) -> record
    problems: list[str] = field(default_factory=list)  # "path: why it was skipped"

    def record(self, path: str) -> dict[str, Any]:
        return self.records[path]

    def values(self, key: str, index: pd.Index | None = None) -> pd.Series:
        """A config key (``curvebench.suites.grid_value`` syntax) per run; MISSING where absent."""
        paths = self.frame["path"] if index is None else self.frame.loc[index, "path"]
        return paths.map(lambda p: config_value(self.records[p]["config"], key))


def config_value(config: Mapping[str, Any], key: str) -> Any:
    """``grid_value`` that returns MISSING instead of raising for a key the config lacks."""
    try:
        return grid_value(config, key)
    except (KeyError, TypeError, IndexError):
        return MISSING


def same_value(value: Any, wanted: Any) -> bool:
    """Config values compare by value: 10 == 10.0; a missing key matches nothing."""
    if value is MISSING:
        return False
    numbers = (int, float)
    if (isinstance(value, numbers) and isinstance(wanted, numbers)
            and not isinstance(value, bool) and not isinstance(wanted, bool)):
        return math.isclose(float(value), float(wanted), rel_tol=0.0, abs_tol=1e-9)
    return bool(value == wanted)


def find_record_files(root: Path) -> list[Path]:
    return sorted(p for name in RECORD_FILES for p in root.rglob(name) if p.is_file())


def read_one(path: Path, name: str) -> dict[str, Any]:
    """Parse and validate one record (as ``read_record`` does), naming it ``name`` in errors."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"{name}: unreadable run record ({err})") from None
    validate_record(record, name)
    return record


def record_row(path: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The flat runs.csv row of one record."""
    split = record["split"]
    spec = split.get("spec") or {}
    metrics = record.get("metrics") or {}
    shot = metrics.get("shot_last") or {}
    env = record["env"]
    failure = record.get("failure") or {}
    config = record["config"]
    epochs = config_value(config, "recipe.epochs")
    cause = str(failure.get("cause", "")).strip().splitlines()
    return {
        "path": path, "status": record["status"], "suite": record.get("suite"), "dataset": record["dataset"],
        "method": record["method"], "model": record["model"],
        "recipe": record.get("recipe") or _or_none(config_value(config, "recipe")),
        "epochs": _or_none(epochs), "imbalance_profile": spec.get("imbalance_profile"),
        "imbalance_factor": spec.get("imbalance_factor"), "noise_model": spec.get("noise_model"),
        "noise_rate": spec.get("noise_rate"), "order": spec.get("order"), "meta_per_class": spec.get("meta_per_class"),
        "data_seed": record["data_seed"], "seed": record["seed"],
        "top1_best": metrics.get("top1_best"), "top1_last": metrics.get("top1_last"),
        "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs"),
        "shot_many_last": shot.get("many"), "shot_medium_last": shot.get("medium"), "shot_few_last": shot.get("few"),
        "realized_noise_rate": split.get("realized_noise_rate"), "num_train": split.get("num_train"),
        "num_meta": split.get("num_meta"), "official": bool(split.get("official")),
        "config_hash": record["config_hash"], "split_sha256": record["split_sha256"],
        "git_sha": env.get("git_sha"), "git_dirty": bool(env.get("git_dirty")),
        "harness_version": env.get("harness_version"), "torch": env.get("torch"), "cuda": env.get("cuda"),
        "device": env.get("device"), "device_name": env.get("device_name"), "cpu_model": env.get("cpu_model"),
        "cpu_isa": env.get("cpu_isa"), "mkl": env.get("mkl"), "onednn": env.get("onednn"),
        "hardware": stack_label(env), "wall_time_s": record.get("wall_time_s"),
        "finished": record.get("finished"), "failure_phase": failure.get("phase"),
        "failure_epoch": failure.get("epoch"), "failure_cause": cause[0] if cause else None,
    }


def _or_none(value: Any) -> Any:
    return None if value is MISSING else value


def load_runs(root: Path) -> Runs:
    """Every result.json and failed.json under ``root``; bad files go to ``problems``."""
    root = Path(root)
    rows, records, problems = [], {}, []
    for file in find_record_files(root):
        rel = file.relative_to(root).as_posix()
        try:
            record = read_one(file, rel)
            row = record_row(rel, record)
        except RecordError as err:
            problems.append(str(err))
            continue
        except (KeyError, TypeError, AttributeError) as err:  # valid schema, unexpected content
            problems.append(f"{rel}: unexpected record content ({type(err).__name__}: {err})")
            continue
        rows.append(row)
        records[rel] = record
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return Runs(root, frame, records, problems)
