"""Epoch checkpoints with every random state, written atomically, read without running code.

A results tree is shared (workers, machines, a cluster's group-writable filesystem), so a checkpoint
is untrusted input: it is read with ``torch.load(weights_only=True)``, which builds tensors and plain
Python containers only and never calls a pickled global. What the payload holds that this loader
would refuse is converted on save and back on load:

* numpy arrays and scalars (confusion matrices, method state such as HAR's counts) become
  ``{"__ndarray__": uint8 tensor of the raw bytes, "dtype": "<i8", "shape": [...]}``: exact for
  every dtype but ``object`` (refused on save);
* numpy's RNG state (a tuple holding a uint32 array) and Python's (a tuple of ints) become dicts
  of ints, lists and tensors.

Writing keeps the previous checkpoint as ``checkpoint.prev.pt`` until the new one is completely on
disk. Resuming (``resume_state``) sets aside a checkpoint that cannot be read, or that a safe load
refuses, as ``checkpoint.pt.damaged-N`` / ``checkpoint.pt.refused-N`` (never deleted, never
overwritten), says so in one line, and falls back to the previous checkpoint, else to a fresh start.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from curvebench.engine.rundir import PREVIOUS_FILE, RunDir
from curvebench.io import atomic_path, move_aside

_NDARRAY = "__ndarray__"
_REQUIRED = ("phase", "epoch", "method", "rng", "history", "conf_last", "conf_best")
_LEAVES = (torch.Tensor, str, bytes, int, float, complex, bool, type(None), set, torch.dtype, torch.device)


def previous_path(path: Path) -> Path:
    return Path(path).with_name(PREVIOUS_FILE)


# -- random states --------------------------------------------------------------------------------
def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    algorithm, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"algorithm": str(algorithm), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    # RNG states are CPU byte tensors; a checkpoint loaded with map_location may have moved them.
    torch.set_rng_state(state["torch"].cpu())
    np_state, py_state = state["numpy"], state["python"]
    if isinstance(np_state, dict):
        key = np_state["key"].cpu().numpy().astype(np.uint32)
        np.random.set_state((np_state["algorithm"], key, np_state["pos"], np_state["has_gauss"],
                             np_state["cached_gaussian"]))
    else:  # a checkpoint of an earlier version: numpy's own tuple
        np.random.set_state(np_state)
    if isinstance(py_state, dict):
        random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss_next"]))
    else:
        random.setstate(py_state)
    for name, g in generators.items():
        g.set_state(state["generators"][name].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -- payload encoding: numpy to tensors and back ----------------------------------------------------
def encode(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with every numpy array/scalar replaced by a tensor record; unchanged parts are kept as
    they are (a module's state dict keeps its ``OrderedDict`` and ``_metadata``). Raises TypeError
    for anything that a safe load would refuse."""
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        if arr.dtype.hasobject:
            raise TypeError(f"{where}: numpy object arrays cannot be checkpointed safely; store numbers")
        raw = np.frombuffer(np.ascontiguousarray(arr).tobytes(), dtype=np.uint8).copy()
        return {_NDARRAY: torch.from_numpy(raw), "dtype": arr.dtype.str, "shape": list(arr.shape),
                "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, dict):
        items = {k: encode(v, f"{where}/{k}") for k, v in obj.items()}
        for k in items:
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: checkpoint keys must be str or int, not {type(k).__name__}")
        if all(items[k] is obj[k] for k in obj):
            return obj
        out: dict[Any, Any] = OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
        if isinstance(obj, OrderedDict) and hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if type(obj) in (list, tuple) or isinstance(obj, torch.Size):
        items = [encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(items, obj)) else type(obj)(items)
    if isinstance(obj, _LEAVES):
        return obj
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be checkpointed safely; "
                    "store tensors, numpy arrays or plain Python values")


def decode(obj: Any) -> Any:
    """The inverse of ``encode``."""
    if isinstance(obj, dict):
        if _NDARRAY in obj:
            raw = obj[_NDARRAY].cpu().numpy().tobytes()
            arr = np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
            return arr[()] if obj.get("scalar") else arr
        for k, v in obj.items():
            obj[k] = decode(v)
        return obj
    if type(obj) is list:
        return [decode(v) for v in obj]
    if type(obj) is tuple:
        return tuple(decode(v) for v in obj)
    return obj


# -- writing --------------------------------------------------------------------------------------
def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``path`` atomically; the checkpoint it replaces becomes ``checkpoint.prev.pt`` once the
    new one is completely on disk. ``path`` exists at every instant (the old one, then the new one):
    the previous checkpoint is a hard link made before the new file is moved into place, so a
    signal at any point (a SLURM requeue) leaves a checkpoint to resume from under its usual name."""
    path = Path(path)
    data = encode(payload)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if path.exists():
            with atomic_path(previous_path(path)) as prev_tmp:
                prev_tmp.unlink(missing_ok=True)
                os.link(path, prev_tmp)


def remove_checkpoints(run_dir: Path) -> None:
    """A finished run's result replaces its checkpoints (set-aside files stay)."""
    files = RunDir(run_dir)
    for path in (files.checkpoint, files.previous_checkpoint):
        path.unlink(missing_ok=True)


# -- reading --------------------------------------------------------------------------------------
class UnusableCheckpoint(Exception):
    """A checkpoint that cannot be resumed from; ``kind`` is "damaged" or "refused"."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _numpy_globals() -> list[Any]:
    """What checkpoints of earlier versions need besides tensors: numpy's array and scalar rebuilders.
    They build arrays of numbers from bytes and call nothing else (torch's documented recipe for
    numpy in ``weights_only`` loads); object arrays hold only what the safe loader itself built."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]

    numeric = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]  # not object: no arbitrary contents
    return [multiarray._reconstruct, (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            multiarray.scalar, (multiarray.scalar, "numpy.core.multiarray.scalar"), np.ndarray, np.dtype, *numeric]


def _refusal(err: Exception) -> str:
    """The gist of torch's several-paragraph refusal, on one line."""
    text = str(err)
    if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return f"it would call {found.group(1)}"
    if found := re.search(r"but got (<[^>]+>)", text):
        return f"it holds a {found.group(1)}"
    if found := re.search(r"WeightsUnpickler error:\s*([^\n]+)", text):
        return found.group(1).strip()
    return text.splitlines()[0].strip() if text.strip() else type(err).__name__


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (plus numpy's array rebuilders for checkpoints of
    earlier versions). Raises UnusableCheckpoint, saying why, for a file that cannot be resumed from."""
    path = Path(path)
    try:
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except pickle.UnpicklingError as err:
            if "numpy" not in str(err):
                raise
            with torch.serialization.safe_globals(_numpy_globals()):
                state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if re.search(r"Unsupported global|but got <", str(err)):  # objects that a safe load does not build
            raise UnusableCheckpoint("refused", f"a safe load refuses it ({_refusal(err)})") from None
        raise UnusableCheckpoint("damaged", f"unreadable, damaged or truncated ({_refusal(err)})") from None
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # truncated or corrupted: torch's zip reader, EOFError, ...
        first = str(err).splitlines()[0].split(". ")[0] if str(err) else type(err).__name__
        raise UnusableCheckpoint("damaged", f"unreadable, damaged or truncated ({first})") from None
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        raise UnusableCheckpoint("damaged", "damaged: not a curvebench checkpoint (keys missing)")
    return decode(state)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def resume_state(path: Path, device: torch.device, log: Callable[[str], None] = _stderr) -> dict[str, Any] | None:
    """The state to resume from: ``path``, else the previous checkpoint, else None (start from scratch).

    An unusable file is set aside; one line says so and what happens instead."""
    path = Path(path)
    prev = previous_path(path)
    notes: list[str] = []
    for candidate in (path, prev):
        if not candidate.exists():
            continue
        try:
            state = load_checkpoint(candidate, device)
        except UnusableCheckpoint as err:
            kind = err.kind
            aside = move_aside(candidate, lambda n: f"{candidate.name}.{kind}-{n}")
            notes.append(f"{candidate.name if notes else candidate}: {err.reason}; set aside as {aside.name}")
            continue
        if candidate == prev:
            why = "; ".join(notes) if notes else f"{path} is missing"
            log(f"checkpoint {why}; resuming from {prev.name} (phase {state['phase']}, epoch {state['epoch']})")
        return state
    if notes:
        log(f"checkpoint {'; '.join(notes)}; the run restarts from scratch")
    return None
