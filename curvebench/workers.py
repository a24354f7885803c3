"""Run claims and workers: several processes, invocations or cluster jobs share one suite safely.

Before training a run, a worker creates ``<run dir>/claim.json`` with ``O_CREAT | O_EXCL`` (atomic
on local file systems and on NFS v3+), holding its host, pid, start time and a heartbeat that a
background thread refreshes every ``CURVEBENCH_HEARTBEAT`` seconds (default 30) while the run
trains. So two workers, or two invocations of ``curvebench``, never train the same run. The claim
is removed when the run ends (done, failed, interrupted by Ctrl-C or SIGTERM).

A claim whose worker died is reclaimed:

- on the same machine (same hostname, boot id and pid namespace): as soon as its pid is gone (a
  zombie or a recycled pid counts as gone: the process start time is recorded too);
- elsewhere (another node, another container): when its heartbeat is older than
  ``CURVEBENCH_STALE_AFTER`` seconds (default 300; clocks are assumed to be synchronised);
- a SLURM job that is requeued (same ``SLURM_JOB_ID``) takes its own claim back at once.

Breaking a dead claim goes through a second ``O_EXCL`` file (``claim.json.break``), and only the
exact claim that was judged dead is removed, so two workers cannot both reclaim a run, nor remove
a fresh claim. A worker whose claim was broken anyway (e.g. it was suspended for longer than the
stale limit) notices at its next heartbeat and abandons the run.
"""

from __future__ import annotations

import _thread
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from curvebench.engine.rundir import CLAIM_FILE, RunDir
from curvebench.io import atomic_write_text

BREAK_SUFFIX = ".break"
BREAK_STALE_S = 60.0  # a break lock older than this belongs to a worker that died while breaking


def heartbeat_interval() -> float:
    return float(os.environ.get("CURVEBENCH_HEARTBEAT", "30"))


def stale_after() -> float:
    return float(os.environ.get("CURVEBENCH_STALE_AFTER", "300"))


def _now_iso(t: float | None = None) -> str:
    return dt.datetime.fromtimestamp(time.time() if t is None else t, dt.timezone.utc).isoformat(timespec="seconds")


# -- who and where ------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def host_identity() -> dict[str, Any]:
    """Hostname plus what tells machines and pid namespaces apart (containers can share a hostname)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


def _pid_start(pid: int) -> str | None:
    """The process start time in clock ticks since boot (Linux), to detect recycled pids."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22; the command name may hold spaces


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this machine (and is the same process when ``start`` is given)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is not None:
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] in ("Z", "X"):  # zombie or dead: exited, not reaped yet
            return False
        return start is None or fields[19] == start
    if Path("/proc/self/stat").exists():  # Linux and no /proc entry: gone
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _slurm_job() -> str | None:
    return os.environ.get("SLURM_JOB_ID")


# -- claims -------------------------------------------------------------------------------------
@dataclass
class ClaimInfo:
    """What a claim file says about its owner, and whether that owner is alive."""

    path: Path
    raw: bytes
    data: dict[str, Any] | None  # None: unreadable (being written)
    alive: bool
    reason: str  # why it is judged alive or dead

    @property
    def owner(self) -> str:
        d = self.data or {}
        text = f"{d.get('host', '?')}:{d.get('pid', '?')}"
        if d.get("worker"):
            text += f" {d['worker']}"
        if d.get("gpu") not in (None, ""):
            text += f" gpu {d['gpu']}"
        return text


def read_claim(run_dir: Path, *, stale: float | None = None, now: float | None = None) -> ClaimInfo | None:
    """The claim on ``run_dir``, judged alive or dead; None when there is none."""
    path = RunDir(run_dir).claim
    try:
        raw = path.read_bytes()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    stale = stale_after() if stale is None else stale
    now = time.time() if now is None else now
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError:  # claims appear with their content (try_claim): an unreadable one is damaged
        return ClaimInfo(path, raw, None, False, "unreadable claim (damaged): stale")
    me = host_identity()
    same_machine = all(data.get(k) == me[k] for k in ("host", "boot_id", "pid_ns"))
    if same_machine and isinstance(data.get("pid"), int):
        alive = pid_alive(data["pid"], data.get("pid_start"))
        return ClaimInfo(path, raw, data, alive, f"pid {data['pid']} {'runs' if alive else 'is gone'}")
    beat = float(data.get("heartbeat", mtime))
    age = now - beat
    return ClaimInfo(path, raw, data, age < stale, f"heartbeat {age:.0f} s ago (stale after {stale:.0f} s)")


class Claim:
    """A claim this process holds on a run directory; refreshes its heartbeat while in a ``with``."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.path = RunDir(self.run_dir).claim
        self.data = data
        self.token = data["token"]
        self.lost = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.interrupt_on_loss = True

    def _still_mine(self) -> bool:
        try:
            return json.loads(self.path.read_bytes()).get("token") == self.token
        except (OSError, ValueError):
            return False

    def heartbeat(self) -> bool:
        """Refresh the heartbeat; False (and ``lost``) when the claim is no longer this process's."""
        if not self._still_mine():
            self.lost = True
            return False
        t = time.time()
        self.data.update(heartbeat=t, heartbeat_iso=_now_iso(t))
        atomic_write_text(self.path, json.dumps(self.data, indent=1) + "\n")
        return True

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                ok = self.heartbeat()
            except OSError as err:  # a hiccup of the file system: try again at the next beat
                print(f"warning: heartbeat of {self.path} failed: {err}", file=sys.stderr)
                continue
            if not ok:
                print(f"warning: the claim on {self.run_dir} was taken over by another worker; "
                      "abandoning this run", file=sys.stderr)
                with self._lock:  # never interrupt the main thread after it has released the claim
                    if self.interrupt_on_loss and not self._stop.is_set():
                        _thread.interrupt_main()
                return

    def release(self) -> None:
        with self._lock:
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._still_mine():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_interval(),), daemon=True,
                                        name=f"heartbeat {self.run_dir.name}")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _break_dead_claim(info: ClaimInfo) -> bool:
    """Remove the dead claim ``info`` (and only it). False when another worker is at it or it changed."""
    lock = info.path.with_name(CLAIM_FILE + BREAK_SUFFIX)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - lock.stat().st_mtime > BREAK_STALE_S:
                lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    try:
        os.write(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode())
        try:
            current = info.path.read_bytes()
        except FileNotFoundError:
            return True  # already gone
        if current != info.raw:  # a heartbeat or a new claim since we looked: not dead after all
            return False
        info.path.unlink()
        return True
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def try_claim(run_dir: Path, *, worker: str = "", stale: float | None = None) -> Claim | None:
    """Claim ``run_dir`` for this process, reclaiming it from a dead worker; None if a live one holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = RunDir(run_dir).claim
    for _ in range(3):
        t = time.time()
        pid = os.getpid()
        data = {"token": uuid.uuid4().hex, **host_identity(), "pid": pid, "pid_start": _pid_start(pid),
                "worker": worker, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "slurm_job": _slurm_job(),
                "started": _now_iso(t), "heartbeat": t, "heartbeat_iso": _now_iso(t)}
        # Written to a private file, then linked into place: the claim appears complete or not at all.
        tmp = path.with_name(f".{CLAIM_FILE}.{data['token']}")
        with open(tmp, "w") as f:
            f.write(json.dumps(data, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if a claim exists
        except FileExistsError:
            info = read_claim(run_dir, stale=stale)
            if info is None:
                continue  # released in between: try again
            requeued = (info.data is not None and info.data.get("slurm_job") is not None
                        and info.data.get("slurm_job") == _slurm_job()
                        and not (info.data.get("pid") == pid and info.data.get("host") == data["host"]))
            if info.alive and not requeued:
                return None
            _break_dead_claim(info)
            continue
        finally:
            tmp.unlink(missing_ok=True)
        return Claim(run_dir, data)
    return None


# -- run states ---------------------------------------------------------------------------------
STATES = ("done", "running", "failed", "corrupt", "interrupted", "missing")


def live_status(run_dir: Path, *, stale: float | None = None) -> str:
    """done | failed | corrupt (a record that cannot be read: re-trained by the next invocation) |
    running (claimed, owner alive) | interrupted (started, nobody on it) | missing."""
    run_dir = Path(run_dir)
    state = RunDir(run_dir).status
    if state in ("done", "failed"):
        return state
    info = read_claim(run_dir, stale=stale)
    if state == "corrupt":
        return "running" if info is not None and info.alive else "corrupt"
    if info is not None and info.alive:
        return "running"
    if RunDir(run_dir).started or info is not None:
        return "interrupted"
    return "missing"


# -- the worker loop ----------------------------------------------------------------------------
@dataclass
class Event:
    kind: str  # start | end | wait
    plan: Any = None
    index: int = 0  # 1-based position in the suite
    outcome: str = ""
    seconds: float = 0.0
    waiting: list[Any] = field(default_factory=list)


def work(runs: Sequence[Any], *, worker: str = "", retry_failed: bool = False, progress: bool = False,
         poll: float = 5.0, wait: bool = True, report: Callable[[Event], None] = lambda e: None) -> Counter[str]:
    """Train every run of ``runs`` that nobody else is training; returns counts of outcomes.

    Outcomes: done, failed (trained here), skipped (finished before or by another worker),
    failed-before (failed earlier; re-run with ``retry_failed``), lost (claim taken over). Runs held
    by live workers elsewhere are waited for (``wait``) and reclaimed if their worker dies.
    """
    from curvebench.run import run_planned

    counts: Counter[str] = Counter()
    index = {id(p): i + 1 for i, p in enumerate(runs)}
    pending = list(runs)
    announced = False
    delay = min(poll, 0.25)
    while pending:
        busy = []
        for plan in pending:
            state = RunDir(plan.run_dir).status  # validated: a corrupt record is re-trained
            if state == "done":
                counts["skipped"] += 1
                continue
            if state == "failed" and not retry_failed:
                counts["failed-before"] += 1
                continue
            claim = try_claim(plan.run_dir, worker=worker)
            if claim is None:
                busy.append(plan)
                continue
            report(Event("start", plan, index[id(plan)]))
            t0 = time.perf_counter()
            try:
                with claim:
                    outcome = run_planned(plan, progress=progress, retry_failed=retry_failed)
            except KeyboardInterrupt:
                if not claim.lost:
                    raise
                outcome = "lost"
            counts[outcome] += 1
            report(Event("end", plan, index[id(plan)], outcome, time.perf_counter() - t0))
        if not busy or not wait:
            if busy:
                counts["elsewhere"] += len(busy)
            break
        time.sleep(delay)  # short at first: the other workers are often about to finish
        delay = min(poll, 2 * delay)
        still = [p for p in busy if RunDir(p.run_dir).status not in ("done", "failed")]
        if still and not announced:
            report(Event("wait", waiting=still))
            announced = True
        pending = busy
    return counts


def sigterm_as_interrupt() -> None:
    """SIGTERM (docker stop, SLURM cancel, a parent) raises KeyboardInterrupt, so claims are released."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: signal.default_int_handler(signum, frame))


# -- several workers on one machine -------------------------------------------------------------
def parse_gpus(text: str | None) -> list[str]:
    if not text:
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus:
        raise ValueError(f"--gpus {text!r}: give GPU indices like 0,1")
    return gpus


def worker_env(i: int, n: int, gpus: Sequence[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of worker ``i`` of ``n``: its GPU (round-robin) and a fair share of CPU threads."""
    env = dict(os.environ if base is None else base)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["TQDM_DISABLE"] = "1"
    return env


def spawn_workers(n: int, child_args: Sequence[str], gpus: Sequence[str]) -> list[subprocess.Popen[bytes]]:
    """Start ``n`` worker processes of ``curvebench`` (``child_args`` = suite, overrides, flags)."""
    procs = []
    for i in range(n):
        name = f"w{i + 1}"
        cmd = [sys.executable, "-m", "curvebench.cli", *child_args, "--worker-name", name]
        procs.append(subprocess.Popen(cmd, env=worker_env(i, n, gpus)))
    return procs


def wait_workers(procs: Sequence[subprocess.Popen[bytes]], grace: float = 30.0,
                 on_exit: Callable[[int, int], None] | None = None, poll: float = 0.5) -> list[int]:
    """Wait for the workers; on Ctrl-C/SIGTERM pass it on, so each releases its claim and stops.

    ``on_exit(i, code)`` is called as soon as worker ``i`` ends, while a killed worker's claim still
    names its run (another worker may reclaim it soon after).
    """
    codes: list[int | None] = [None] * len(procs)
    try:
        while any(c is None for c in codes):
            for i, p in enumerate(procs):
                if codes[i] is None and p.poll() is not None:
                    codes[i] = p.returncode
                    if on_exit is not None:
                        on_exit(i, p.returncode)
            if any(c is None for c in codes):
                time.sleep(poll)
        return [int(c) for c in codes]  # type: ignore[arg-type]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
        raise


def describe_worker_exit(index: int, code: int, runs: Sequence[Any]) -> str:
    """How worker ``w{index+1}`` (the index-th process of ``spawn_workers``) ended, and the run it held.

    A killed worker leaves its claim behind, which names the run (the next invocation, or another
    worker, reclaims and resumes it).
    """
    name = f"w{index + 1}"
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
        if -code == signal.SIGKILL:
            how += " (out of memory, or killed by hand)"
    else:  # 1: runs that failed (failed.json) or an error; 2: an error it printed
        how = f"exited with status {code}" + (" (failed runs, or an error it printed above)" if code == 1 else
                                              " (an error it printed above)" if code == 2 else "")
    held = [plan for plan, info in iter_claims(runs)
            if info.data is not None and not info.alive and info.data.get("worker") == name]
    what = "; it was training " + ", ".join(f"{p.label} ({p.run_dir})" for p in held) if held else ""
    resume = "; run the same command again to resume" if code < 0 or held else ""
    return f"worker {name} {how}{what}{resume}"


# -- status per cell ----------------------------------------------------------------------------
CELL_EXCLUDED = ("method", "seed")


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def cell_of(grid: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in grid.items() if k not in CELL_EXCLUDED)


def status_table(runs: Sequence[Any], states: Sequence[str]) -> tuple[list[str], list[list[str]], Counter[str]]:
    """(headers, rows, totals): one row per cell (grid point without method and seed), one column per method."""
    from curvebench.suites import _fmt

    cells: dict[tuple[tuple[str, Any], ...], dict[str, Counter[str]]] = {}
    methods: list[str] = []
    totals: Counter[str] = Counter()
    for plan, state in zip(runs, states):
        method = plan.config["method"]["name"]
        if method not in methods:
            methods.append(method)
        cells.setdefault(cell_of(plan.grid), {}).setdefault(method, Counter())[state] += 1
        totals[state] += 1
    keys = list(dict.fromkeys(k for cell in cells for k, _ in cell))
    short = _short_keys(keys)
    rows = []
    for cell, per_method in cells.items():
        label = " ".join(f"{short[k]}={_fmt(v)}" for k, v in cell) or "(all)"
        row = [label]
        for m in methods:
            c = per_method.get(m)
            row.append(_cell_text(c) if c else "")
        rows.append(row)
    return ["cell", *methods], rows, totals


def _cell_text(c: Counter[str]) -> str:
    n = sum(c.values())
    parts = [f"{c['done']}/{n} done"]
    parts += [f"{c[s]} {s}" for s in ("running", "failed", "corrupt", "interrupted") if c[s]]
    return ", ".join(parts)


def totals_line(totals: Counter[str]) -> str:
    n = sum(totals.values())
    return f"{n} runs: " + ", ".join(f"{totals[s]} {s}" for s in STATES if s != "corrupt" or totals[s])


def iter_claims(runs: Sequence[Any]) -> Iterator[tuple[Any, ClaimInfo]]:
    for plan in runs:
        info = read_claim(plan.run_dir)
        if info is not None:
            yield plan, info
