"""SLURM through submitit: job states without accounting, requeue on preemption and time limits, job ids.

``hydra/launcher=submitit_slurm`` submits through :func:`launch` (``launch_suite`` puts it in place of the
plugin's ``launch`` while it submits, :func:`patched_launcher`): like the plugin, one array job per sweep
and one task per run, and in addition:

- job states from ``squeue`` (submitit asks ``sacct``, which fails where accounting storage is
  disabled: a warning per poll, and a cancelled job is then waited for forever);
- one outcome per job that ended without a result (cancelled, timed out too often, node failure)
  instead of an exception that hides the other jobs' outcomes;
- ``slurm_job.json`` in each run directory: the job id that was submitted for it, for ``curvebench
  status`` (queued runs have no claim yet).

Inside a job (:func:`job_signals`), submitit's signal protocol is kept: SIGUSR2 (``scancel
--signal=USR2``, or the time limit minus ``hydra.launcher.signal_delay_s``) requeues the job, which
resumes the run from its last epoch checkpoint; SIGTERM (``scancel``, ``scontrol requeue``,
preemption) releases the run's claim and ends the job (SLURM restarts it when it requeues it). A job
that reached its time limit more than ``hydra.launcher.max_num_timeout`` times ends with the outcome
``timed-out`` (never a failed run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from curvebench.engine.rundir import RunDir
from curvebench.errors import ConfigError
from curvebench.io import atomic_write_text

FINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "SPECIAL_EXIT", "REVOKED", "GONE"}  # GONE: no longer known to squeue
HOW_TO_START = ("run it on the cluster's login node, or start a local test cluster with "
                "`sudo scripts/slurm-local.sh up` and `eval \"$(scripts/slurm-local.sh env)\"` (docs/CLUSTER.md)")


# -- is there a SLURM? --------------------------------------------------------------------------
def check_slurm() -> None:
    """One clear error when sbatch is missing or SLURM's controller does not answer."""
    missing = [tool for tool in ("sbatch", "srun", "scontrol", "squeue") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"hydra/launcher=submitit_slurm needs SLURM and {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not on PATH: {HOW_TO_START}")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConfigError(f"SLURM's controller does not answer (scontrol ping: {err}): {HOW_TO_START}") from None
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        said = [line.strip() for line in (ping.stdout + ping.stderr).splitlines() if line.strip("* \t")]
        said = [line for line in said if "DOWN" in line or "error" in line.lower()] or said  # not its banner
        raise ConfigError(f"SLURM's controller does not answer (scontrol ping: {said[0] if said else 'no output'}); "
                          f"check SLURM_CONF, or {HOW_TO_START}")


# -- job states ---------------------------------------------------------------------------------
def squeue(job_ids: Sequence[str]) -> dict[str, dict[str, str]] | None:
    """{job id: {State, Reason, NodeList, JobID}} from squeue, array tasks both as ``A_i`` and by their own id.

    Jobs squeue no longer knows are absent; None when squeue cannot be asked.
    """
    ids = sorted({str(j) for j in job_ids if j})
    if not ids or shutil.which("squeue") is None:
        return None if ids else {}
    cmd = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%A|%T|%r|%N", "-j", ",".join(ids)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return {} if "Invalid job id" in out.stderr else None  # every one of them is gone
    info: dict[str, dict[str, str]] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        array_id, own_id, state, reason, nodes = parts
        entry = {"JobID": array_id, "State": state, "Reason": reason, "NodeList": nodes}
        info[array_id] = info[own_id] = entry
    return info


def _watcher_class() -> type:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueWatcher(SlurmInfoWatcher):
        """submitit's watcher, asking squeue instead of sacct (which needs accounting storage)."""

        def update(self) -> None:
            import time

            pending = sorted(self._registered - self._finished)
            if not pending:
                return
            self._num_calls += 1
            info = squeue(pending)
            self._last_status_check = time.time()
            if info is None:  # squeue failed: keep the states we had, ask again later
                return
            for job_id in pending:
                self._info_dict[job_id] = info.get(job_id, {"State": "GONE"})
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

        def is_done(self, job_id: str, mode: str = "standard") -> bool:
            return self.get_state(job_id, mode=mode).split()[0].upper() in FINAL_STATES

    return SqueueWatcher


# -- what the launcher submitted ----------------------------------------------------------------
_EXPECTED: list[tuple[frozenset[str], Path]] = []  # (the grid overrides of a planned run, its run directory)


def expect_runs(runs: Sequence[Any]) -> None:
    """Tell the launcher which run directory each job's overrides name (to record their job ids)."""
    from curvebench.suites import _fmt

    _EXPECTED[:] = [(frozenset(f"{k}={_fmt(v)}" for k, v in r.grid.items()), Path(r.run_dir)) for r in runs]


def _run_dir_of(overrides: Sequence[str]) -> Path | None:
    given = set(overrides)
    matches = sorted(((len(keys), d) for keys, d in _EXPECTED if keys <= given), key=lambda m: -m[0])
    if not matches or (len(matches) > 1 and matches[1][0] == matches[0][0]):
        return None
    return matches[0][1]  # the most specific grid point (blocks of a suite can nest)


def record_job(run_dir: Path, job_id: str, log: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RunDir(run_dir).slurm_job, json.dumps({
        "job_id": job_id, "submitted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "log": str(log)}, indent=1) + "\n")


def read_job(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(RunDir(run_dir).slurm_job.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("job_id") else None


def _short(overrides: Sequence[str]) -> str:
    return " ".join(o for o in overrides if not o.startswith(("experiment=", "paths.", "+curvebench_job.")))


def launch(self: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
    """``SlurmLauncher.launch`` of the submitit plugin with squeue-based waiting, an outcome for each job that
    ended without a result, and job ids recorded in the run directories."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, filter_overrides
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.core.utils import FailedJobError, UncompletedJobError

    assert self.config is not None
    params = dict(self.params)
    python = os.environ.get("CURVEBENCH_SLURM_PYTHON")  # e.g. "apptainer exec --nv curvebench.sif python"
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"),
                                     **({"slurm_python": python} if python else {}))
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()})
    sweep_dir = Path(str(self.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    args = [(list(ovs), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
             Singleton.get_state()) for i, ovs in enumerate(job_overrides)]
    try:
        jobs = executor.map_array(self, *zip(*args))
    except (FailedJobError, subprocess.CalledProcessError, OSError) as err:
        said = [line for line in str(err).splitlines() if "error" in line.lower()] or str(err).splitlines()
        raise ConfigError(f"sbatch refused the jobs: {said[-1].strip() if said else err}") from None
    watcher = _watcher_class()(delay_s=10)  # squeue at most every 10 s (results are seen at once)
    for job, ovs in zip(jobs, job_overrides):
        job.watcher = watcher  # instead of submitit's sacct watcher
        watcher.register_job(job.job_id)
        run_dir = _run_dir_of(ovs)
        if run_dir is not None:
            record_job(run_dir, job.job_id, job.paths.stdout)
    first = jobs[0].job_id.split("_")[0]
    print(f"submitted SLURM job {first} ({len(jobs)} task(s)); logs under {jobs[0].paths.folder.parent}",
          flush=True)
    returns = []
    for job, ovs in zip(jobs, job_overrides):
        try:
            ret = job.results()[0]
        except UncompletedJobError:  # ended without a result: cancelled, node failure
            ret = JobReturn(overrides=list(ovs), status=JobStatus.COMPLETED,
                            _return_value=f"ended: {job.state.split()[0].lower()}")
        except FailedJobError:  # the job's Python failed outside the task function
            ret = JobReturn(overrides=list(ovs), status=JobStatus.COMPLETED,
                            _return_value=f"error: job {job.job_id} failed (log: {job.paths.stderr})")
        if ret.status != JobStatus.COMPLETED:  # Hydra could not run the task function
            ret = JobReturn(overrides=list(ovs), status=JobStatus.COMPLETED,
                            _return_value=f"error: {type(ret._return_value).__name__}: {ret._return_value}")
        outcome = str(ret.return_value).removeprefix("ended: ").split(" (log")[0]
        print(f"job {job.job_id}: {outcome:<10} {_short(filter_overrides(ovs))}", flush=True)
        returns.append(ret)
    return returns


@contextlib.contextmanager
def patched_launcher() -> Iterator[None]:
    """While submitting: the submitit plugin's ``SlurmLauncher.launch`` is :func:`launch` (Hydra instantiates
    launchers only from its plugin package, so the plugin's class is kept and only its submitting side swapped;
    the jobs unpickle and run the plugin's class unchanged)."""
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    original = SlurmLauncher.launch
    SlurmLauncher.launch = launch
    try:
        yield
    finally:
        SlurmLauncher.launch = original


# -- inside a job -------------------------------------------------------------------------------
class TimedOut(BaseException):
    """The job reached its time limit once too often (not an error of the run: never caught as one)."""


def _submitit_handler(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return type(owner).__module__.startswith("submitit.") if owner is not None else False


@contextlib.contextmanager
def job_signals() -> Iterator[None]:
    """Within a submitit job: SIGTERM releases the claim (KeyboardInterrupt), and a time limit reached once
    too often raises :class:`TimedOut` instead of an exception that would record the run as failed."""
    usr2 = getattr(signal, "SIGUSR2", None)
    if usr2 is None or not _submitit_handler(signal.getsignal(usr2)):
        yield
        return
    submitit_usr2 = signal.getsignal(usr2)
    previous_term = signal.getsignal(signal.SIGTERM)
    handling = []

    def on_usr2(signum: int, frame: Any) -> None:
        from submitit.core.utils import UncompletedJobError

        handling.append(signum)
        try:
            submitit_usr2(signum, frame)  # checkpoint and requeue: exits (SystemExit)
        except UncompletedJobError as err:  # not requeued: the job goes on to end normally
            handling.clear()
            raise TimedOut(str(err)) from None
        except Exception as err:  # noqa: BLE001 - e.g. `scontrol requeue` killed by the requeue's own SIGTERM
            print(f"curvebench job: while requeueing: {type(err).__name__}: {err}; the job ends here and the run "
                  "keeps its checkpoint", file=sys.stderr, flush=True)
            raise SystemExit(-1) from None  # never an exception of the run (it would be recorded as failed)

    def on_term(signum: int, frame: Any) -> None:
        if handling:  # our own requeue: the job is on its way out
            return
        print("curvebench job: SIGTERM (scancel, requeue or preemption): releasing the run; it resumes from "
              "its last epoch checkpoint when the job runs again", file=sys.stderr, flush=True)
        signal.default_int_handler(signum, frame)

    signal.signal(usr2, on_usr2)
    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(usr2, submitit_usr2)
        signal.signal(signal.SIGTERM, previous_term)


def resume_note(run_dir: Path) -> str | None:
    """Where a job picks the run up: the epoch its checkpoint holds, and SLURM's restart count."""
    import torch

    from curvebench.engine.checkpoint import load_checkpoint

    path = RunDir(run_dir).checkpoint
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path, torch.device("cpu"))  # the safe loader (docs/SECURITY.md)
        where = f"after epoch {int(state['epoch']) + 1} of phase {state['phase']}"
    except Exception as err:  # noqa: BLE001 - only a note; the trainer reports a damaged checkpoint
        where = f"(unreadable: {type(err).__name__})"
    restarts = os.environ.get("SLURM_RESTART_COUNT")
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job and "SLURM_ARRAY_TASK_ID" in os.environ \
        else os.environ.get("SLURM_JOB_ID", "")
    slurm = f"SLURM job {job}" + (f", restart {restarts}" if restarts else "") if job else ""
    return f"resuming from the checkpoint {where}" + (f" ({slurm})" if slurm else "")


# -- status -------------------------------------------------------------------------------------
def job_states(runs: Sequence[Any], states: Sequence[str]) -> dict[int, tuple[str, str]]:
    """{index of run: (job id, SLURM state)} for runs that are not finished and have a SLURM job."""
    from curvebench.workers import read_claim

    wanted: dict[int, str] = {}
    for i, (plan, state) in enumerate(zip(runs, states)):
        if state in ("done", "failed"):
            continue
        job = read_job(plan.run_dir)
        claim = read_claim(plan.run_dir)
        job_id = (job or {}).get("job_id") or ((claim.data or {}).get("slurm_job") if claim is not None else None)
        if job_id:
            wanted[i] = str(job_id)
    if not wanted:
        return {}
    info = squeue(list(wanted.values()))
    out = {}
    for i, job_id in wanted.items():
        if info is None:
            out[i] = (job_id, "?")
        elif job_id in info:
            entry = info[job_id]
            reason = entry["Reason"] if entry["State"] == "PENDING" and entry["Reason"] not in ("", "None") else ""
            out[i] = (job_id, entry["State"] + (f" ({reason})" if reason else ""))
        else:
            out[i] = (job_id, "gone")
    return out
