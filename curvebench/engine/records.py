"""Run records: ``result.json`` (status "done") and ``failed.json`` (status "failed").

Both share one versioned JSON schema, are validated on write and on read, and are written
atomically (temporary file + rename), so a reader never sees half a file. The leaderboard is built
from these files only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any, Mapping

import jsonschema

from curvebench.engine.hardware import ENV_SCHEMA_PROPERTIES, stack_fields
from curvebench.errors import RecordError
from curvebench.io import atomic_write_text

SCHEMA_VERSION = 1

# Keys of the resolved config that do not change what is trained (where files go, how progress
# is shown, which device runs it). They are left out of the config hash. The seed is left out
# too: runs that differ only by seed belong to the same leaderboard cell.
HASH_EXCLUDED_KEYS = ("paths", "suite", "seed", "hydra")
HASH_EXCLUDED_TRAIN_KEYS = ("device", "progress", "allow_cpu", "checkpoint")
# Keys added after records were published: left out of the hash while they hold these defaults, so a
# config that does not use them hashes as it did before they existed (every published record stays
# valid). Same rule as the split spec's ``pool_per_class`` (curvebench/data/types.py, for the split hash).
HASH_DEFAULTS: dict[tuple[str, str], Any] = {
    ("train", "compile_meta"): False,  # the compiled meta step (engine/meta_step.py)
    ("split", "pool_per_class"): 0,  # no pool cap (fmnist sets one; older suites have no such key)
}

_NUMBER = {"type": "number"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "curvebench run record",
    "type": "object",
    "required": [
        "schema_version", "status", "run_id", "method", "dataset", "model", "seed", "data_seed",
        "config_hash", "split_sha256", "split", "config", "env",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "status": {"enum": ["done", "failed"]},
        "run_id": {"type": "string"},
        "suite": {"type": ["string", "null"]},
        "method": {"type": "string"},
        "dataset": {"type": "string"},
        "model": {"type": "string"},
        "recipe": {"type": "string"},
        "seed": {"type": "integer"},
        "data_seed": {"type": "integer"},
        "config_hash": _HASH,
        "split_sha256": _HASH,
        "split": {
            "type": "object",
            "description": "the split spec plus what was realised",
            "required": ["spec", "official", "num_train", "num_meta", "realized_noise_rate"],
            "properties": {
                "spec": {"type": "object"},
                "official": {"type": "boolean"},
                "num_train": {"type": "integer"},
                "num_meta": {"type": "integer"},
                "realized_noise_rate": _NULLABLE_NUMBER,
                "train_counts_clean": {"type": "array", "items": {"type": "integer"}},
                "train_counts_observed": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "config": {"type": "object", "description": "the fully resolved config of the run"},
        "metrics": {
            "type": "object",
            "description": "accuracies in percent on the clean test set",
            "required": ["top1_last", "top1_best", "best_epoch", "epochs", "top1_per_epoch"],
            "properties": {
                "top1_last": _NUMBER,
                "top1_best": _NUMBER,
                "best_epoch": {"type": "integer", "description": "0-based epoch of the final phase"},
                "epochs": {"type": "integer"},
                "top1_per_epoch": {"type": "array", "items": _NUMBER},
                "per_class_last": {"type": "array", "items": _NUMBER},
                "confusion_last": {"type": "array", "items": {"type": "array"}},
                "shot_last": {
                    "type": "object",
                    "properties": {g: _NULLABLE_NUMBER for g in ("many", "medium", "few")},
                },
                "shot_groups": {"type": "object"},
                "extra_models": {"type": "object"},
            },
        },
        "phases": {"type": "array", "items": {"type": "object"}},
        "diagnostics": {"type": "object"},
        "failure": {
            "type": "object",
            "required": ["epoch", "cause"],
            "properties": {
                "phase": {"type": "string"},
                "epoch": {"type": "integer"},
                "cause": {"type": "string"},
                "traceback": {"type": "string"},
            },
        },
        "env": {
            "type": "object",
            "required": ["harness_version", "git_sha", "git_dirty", "torch", "device"],
            "properties": ENV_SCHEMA_PROPERTIES,  # hardware and math libraries (curvebench.engine.hardware)
        },
        "wall_time_s": _NUMBER,
        "started": {"type": "string"},
        "finished": {"type": "string"},
    },
    "allOf": [
        {"if": {"properties": {"status": {"const": "done"}}},
         "then": {"required": ["metrics", "wall_time_s"]}},
        {"if": {"properties": {"status": {"const": "failed"}}},
         "then": {"required": ["failure"]}},
    ],
}


_VALIDATOR = jsonschema.Draft202012Validator(RECORD_SCHEMA)  # compiled once: ~30x faster than validate()


def validate_record(record: Mapping[str, Any], source: str | Path = "<record>") -> None:
    """Raise RecordError (naming the source) unless ``record`` follows the current schema."""
    version = record.get("schema_version") if isinstance(record, Mapping) else None
    if version != SCHEMA_VERSION:
        raise RecordError(
            f"{source}: schema_version {version!r} is not the supported version {SCHEMA_VERSION}"
        )
    err = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(record))
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise RecordError(f"{source}: invalid run record at {where}: {err.message}")


def read_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record; RecordError says which file is wrong and why."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: unreadable run record ({err})") from None
    validate_record(record, path)
    return record


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Validate, then atomically write a run record as pretty JSON."""
    validate_record(record, path)
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=_json_default) + "\n")


# -- what the records in a run directory say about the run --------------------------------------
_SETUP_CAUSES = ("DataError", "ConfigError", "RecordError", "UnknownNameError")
_STATE_CACHE: dict[str, tuple[tuple[int, int, int], str]] = {}


def record_state(path: Path) -> str:
    """"missing", "valid" or "corrupt" (unreadable or off-schema) for one record file.

    For ``failed.json``, "valid" means a failure of training itself; "setup" marks a failure an
    earlier version recorded for a cause outside training (no data, a bad config), which is never
    permanent. Cached by (mtime, size, inode): status tables ask often.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _STATE_CACHE.get(str(path))
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        record = read_record(path)
        state = "valid"
        if record["status"] == "failed" and (record["split_sha256"] == "0" * 64
                                             or str(record["failure"]["cause"]).startswith(_SETUP_CAUSES)):
            state = "setup"
    except RecordError:
        state = "corrupt"
    _STATE_CACHE[str(path)] = (key, state)
    return state


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def hashable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines what is trained (seed excluded)."""
    cfg = {k: v for k, v in config.items() if k not in HASH_EXCLUDED_KEYS}
    if isinstance(cfg.get("train"), Mapping):
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k not in HASH_EXCLUDED_TRAIN_KEYS}
    for (section, key), default in HASH_DEFAULTS.items():
        group = cfg.get(section)
        if isinstance(group, Mapping) and key in group and _same_default(group[key], default):
            cfg[section] = {k: v for k, v in group.items() if k != key}
    return cfg


def _same_default(value: Any, default: Any) -> bool:
    """``value`` is ``default`` (booleans and numbers kept apart: 0 is not False)."""
    return type(value) is type(default) and value == default


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``hashable_config(config)``."""
    blob = json.dumps(hashable_config(config), sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()


def git_state(repo_dir: Path | None = None) -> tuple[str, bool]:
    """(sha, dirty) of the source tree, or ("unknown", False) outside a git checkout.

    ``CURVEBENCH_GIT_SHA`` (set when building the container image) wins when present.
    """
    if os.environ.get("CURVEBENCH_GIT_SHA"):
        return os.environ["CURVEBENCH_GIT_SHA"], os.environ.get("CURVEBENCH_GIT_DIRTY", "0") == "1"
    repo_dir = repo_dir or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo_dir), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True, timeout=10).stdout
        return sha, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def environment(device: str) -> dict[str, Any]:
    """Versions, git state, hardware and math libraries, recorded with every run (never hashed)."""
    import numpy
    import torch

    from curvebench import __version__

    sha, dirty = git_state()
    env: dict[str, Any] = {
        "harness_version": __version__,
        "git_sha": sha,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device,
        "device_name": platform.processor() or platform.machine(),
        "hostname": socket.gethostname(),
        "image": os.environ.get("CURVEBENCH_IMAGE"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    env.update(stack_fields(device))  # CPU instruction set, MKL/oneDNN/BLAS versions, threads
    return env
