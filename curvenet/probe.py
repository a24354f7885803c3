"""The probing stage's schedule, and the probe-curve cache shared by the CurveNet runs of a split and
probe seed.

Schedule (official ``recognition_cycle`` + ``config/cycle``, docs/methods.md §2.2), as two phases:

- ``probe``: ``epochs`` (120) epochs at a constant lr (0.1), batch ``batch_size`` (the recipe's, 128);
- ``probe_cyclic``: ``cyclic_epochs`` (180) epochs of a square wave, ``cyclic_lr_high`` (0.01) for
  ``cyclic_half_period`` (15) epochs, then ``cyclic_lr_low`` (0.001) for as many, and so on; batch
  ``cyclic_batch_size`` (default ``batch_size // 8`` = 16, the code's ``batch_size // 8``).

The code toggles the wave at absolute epochs that are multiples of the half period; here the wave
starts high at the first cyclic epoch. The two agree whenever ``epochs`` is a multiple of the half
period, as in the official 120/15.

Cache: the raw losses [n, T] go to ``<ctx.cache_dir>/curvenet/probe-<split>-seed<s>-<key>.npz``,
keyed by the split hash, the probe's seed s and everything else that determines the probe (its
schedule, the backbone, the augmentation, ``train.limit_batches``). The seed is the run's seed by
default (``probe.seed: null``: one probe per split and seed, so CurveNet's spread over seeds includes
the probe's variance) or a fixed ``probe.seed`` (one probe per split shared by every seed). The file
also records the split hash and the observed labels it was made for, and is checked against them
when read.

Concurrency [DECISION]: a run that needs a missing file first claims ``<file>.lock`` (created with
O_EXCL, naming the run directory). Other runs of the same split and probe seed wait for the file
(``wait``), polling every ``poll_s`` seconds, while the prober refreshes the lock's mtime (at most
every 30 s, from its training steps). A lock not refreshed for ``stale_after_s`` belongs to a dead
run: a waiter removes it and probes itself. The file is published atomically and first-writer-wins
(written to a temporary name, then hard-linked to its final name, which fails if it exists), so even
two probes of the same split (``wait: false``, or a stale-lock takeover of a live but stalled run)
leave one file that every run reads. A lock is also taken over at once when its holder is known to
have stopped: a dead process on this host, or an earlier (failed or interrupted) run of this same
process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from curvebench.errors import ConfigError

PROBE = "probe"
PROBE_CYCLIC = "probe_cyclic"
PROBE_PHASES = (PROBE, PROBE_CYCLIC)
CACHE_VERSION = 1
HEARTBEAT_S = 30.0


def probe_batch_sizes(probe: Mapping[str, Any], recipe_batch_size: int) -> tuple[int, int]:
    bs = int(probe["batch_size"] or recipe_batch_size)
    cyc = int(probe["cyclic_batch_size"] or max(1, bs // 8))
    return bs, cyc


def probe_epochs(probe: Mapping[str, Any]) -> int:
    """T, the number of recorded epochs (one loss per sample per epoch)."""
    return int(probe["epochs"]) + int(probe["cyclic_epochs"])


def probe_lr(probe: Mapping[str, Any], phase: str, epoch: int) -> float:
    """The probe's lr at ``epoch`` (0-based, within ``phase``)."""
    if phase == PROBE:
        return float(probe["lr"])
    half = int(probe["cyclic_half_period"])
    return float(probe["cyclic_lr_high"] if (epoch // half) % 2 == 0 else probe["cyclic_lr_low"])


def probe_seed(probe: Mapping[str, Any], run_seed: int) -> int:
    """The probe's seed: ``probe.seed``, or the run's seed when it is null (the default)."""
    return int(run_seed if probe["seed"] is None else probe["seed"])


def probe_key(split_sha256: str, probe: Mapping[str, Any], recipe_batch_size: int, model: Mapping[str, Any],
              dataset: Mapping[str, Any], limit_batches: int | None, seed: int) -> dict[str, Any]:
    """Everything the recorded losses depend on besides the code version; ``seed`` is the probe's
    effective seed (``probe_seed``)."""
    bs, cyc = probe_batch_sizes(probe, recipe_batch_size)
    schedule = {k: probe[k] for k in ("epochs", "lr", "cyclic_epochs", "cyclic_lr_high", "cyclic_lr_low",
                                      "cyclic_half_period", "momentum", "nesterov", "weight_decay")}
    schedule["seed"] = int(seed)
    return {
        "version": CACHE_VERSION, "split_sha256": split_sha256, "probe": {**schedule, "batch_size": bs,
                                                                           "cyclic_batch_size": cyc},
        "model": dict(model), "augment": dict(dataset.get("augment", {})),
        "normalize": dict(dataset.get("normalize", {})), "limit_batches": limit_batches,
    }


def key_digest(key: Mapping[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def curves_path(cache_dir: Path, key: Mapping[str, Any]) -> Path:
    seed = key["probe"]["seed"]
    return Path(cache_dir) / "curvenet" / f"probe-{key['split_sha256'][:12]}-seed{seed}-{key_digest(key)[:12]}.npz"


# -- the file ------------------------------------------------------------------------------------
def publish_curves(path: Path, losses: np.ndarray, labels: np.ndarray, split_sha256: str,
                   key: Mapping[str, Any]) -> bool:
    """Write the curves atomically; first writer wins. Returns False when the file already existed
    (another run published first: read that one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp.npz")
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # a shared cache (mkstemp makes it private)
        np.savez(tmp, losses=np.asarray(losses, np.float32), labels=np.asarray(labels, np.int64),
                 split_sha256=np.asarray(split_sha256), key=np.asarray(json.dumps(key, sort_keys=True, default=str)))
        try:
            os.link(tmp, path)  # atomic, and fails when the name exists
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: rename (atomic; last writer wins)
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_curves(path: Path, split_sha256: str, labels: np.ndarray) -> np.ndarray:
    """Raw probe losses [n, T] from ``path``, checked against this run's split and observed labels."""
    remedy = "delete it (a new probe will be run), or point method.probe.curves_file at the right file"
    try:
        with np.load(path, allow_pickle=False) as z:
            losses, file_labels, file_sha = z["losses"], z["labels"], str(z["split_sha256"])
    except FileNotFoundError:
        raise ConfigError(f"CurveNet curves file {path} does not exist") from None
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(f"CurveNet curves file {path} cannot be read ({err}); {remedy}") from None
    if file_sha != split_sha256:
        raise ConfigError(
            f"CurveNet curves file {path} was recorded on split {file_sha[:12]}, but this run's split is "
            f"{split_sha256[:12]}: the curves belong to another split; {remedy}"
        )
    if losses.ndim != 2 or losses.shape[0] != labels.shape[0] or not np.array_equal(file_labels, labels):
        raise ConfigError(
            f"CurveNet curves file {path} does not match this run's training set ({losses.shape} losses, "
            f"{labels.shape[0]} training samples, or different observed labels); {remedy}"
        )
    return losses.astype(np.float32, copy=False)


# -- the lock ------------------------------------------------------------------------------------
class ProbeLock:
    """``<curves file>.lock``: who is probing this split (see the module docstring)."""

    def __init__(self, curves: Path, owner: str, stale_after_s: float) -> None:
        self.path = curves.with_name(curves.name + ".lock")
        self.owner = owner
        self.stale_after_s = float(stale_after_s)
        self.held = False
        self._beat = 0.0

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = json.dumps({"owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.time()})
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = self.holder()
            if held is not None and held.get("owner") == self.owner:  # ours, from before a restart
                self.path.write_text(info)
                self.held, self._beat = True, time.monotonic()
                return True
            return False
        with os.fdopen(fd, "w") as f:
            f.write(info)
        self.held, self._beat = True, time.monotonic()
        return True

    def is_stale(self) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime > self.stale_after_s
        except FileNotFoundError:
            return False

    def holder_gone(self) -> bool:
        """The holder is known to have stopped: a dead process on this host, or an earlier run of this
        very process (runs of one process are sequential, so that run failed or was interrupted)."""
        held = self.holder()
        if not held or held.get("host") != socket.gethostname() or held.get("owner") == self.owner:
            return False
        pid = held.get("pid")
        if pid == os.getpid():
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, TypeError, ValueError, OverflowError):
            return False
        return False

    def break_stale(self) -> None:
        """Remove a stale lock (only one of several waiters succeeds in renaming it away)."""
        grave = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, grave)
            grave.unlink(missing_ok=True)

    def heartbeat(self, force: bool = False) -> None:
        if self.held and (force or time.monotonic() - self._beat > HEARTBEAT_S):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)
            self._beat = time.monotonic()

    def release(self) -> None:
        if self.held:
            held = self.holder()
            if held is None or held.get("owner") == self.owner:
                self.path.unlink(missing_ok=True)
            self.held = False


def claim_probe(curves: Path, lock: ProbeLock, wait: bool, poll_s: float) -> bool:
    """True: this run must probe (it holds the lock, or does not wait); False: the curves exist."""
    announced = False
    while True:
        if curves.exists():
            return False
        if lock.try_acquire():
            if curves.exists():  # published between our check and our claim
                lock.release()
                return False
            return True
        if not wait:
            return True
        if lock.is_stale() or lock.holder_gone():
            print(f"curvenet: removing stale probe lock {lock.path} ({lock.holder()})", file=sys.stderr)
            lock.break_stale()
            continue
        if not announced:
            held = lock.holder() or {}
            print(f"curvenet: waiting for the probe curves {curves.name}, being recorded by {held.get('owner')} "
                  f"(lock {lock.path})", file=sys.stderr)
            announced = True
        time.sleep(poll_s)
