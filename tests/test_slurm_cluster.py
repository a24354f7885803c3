"""Against a real SLURM cluster: suites through hydra/launcher=submitit_slurm equal local runs bit for bit, and jobs
that are cancelled, preempted (SIGUSR2, ``scontrol requeue``) or reach their time limit resume to the same result.

Opt-in: ``CURVEBENCH_SLURM_TESTS=1`` with a cluster up, as CI does::

    sudo scripts/slurm-local.sh up && eval "$(scripts/slurm-local.sh env)"
    CURVEBENCH_SLURM_TESTS=1 python -m pytest -q -m slurm tests/test_slurm_cluster.py

Each test drives ``curvebench`` as a user would, in subprocesses (jobs need their own processes anyway).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from curvebench.compare import compare_trees

ROOT = Path(__file__).resolve().parents[1]
CURVEBENCH = [sys.executable, "-m", "curvebench.cli"]
pytestmark = pytest.mark.slurm


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return None if ping.returncode == 0 and " is UP" in ping.stdout else f"scontrol ping: {ping.stdout}{ping.stderr}"


@pytest.fixture(scope="module")
def cluster() -> None:
    if os.environ.get("CURVEBENCH_SLURM_TESTS") != "1":
        pytest.skip("needs a SLURM cluster: CURVEBENCH_SLURM_TESTS=1 after scripts/slurm-local.sh up")
    problem = _cluster_problem()
    if problem:
        pytest.fail(f"CURVEBENCH_SLURM_TESTS=1 but no SLURM cluster answers ({problem}); scripts/slurm-local.sh up")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(CURVEBENCH_DATA=str(tmp_path / "data"), CURVEBENCH_SPLITS=str(tmp_path / "splits"), TQDM_DISABLE="1",
             PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")])))
    return e


def curvebench(args: list[str], env: dict[str, str], results: Path, *, wait: bool = True):
    e = {**env, "CURVEBENCH_RESULTS": str(results)}
    if wait:
        return subprocess.run([*CURVEBENCH, *args], env=e, cwd=results.parent, capture_output=True, text=True,
                              timeout=600)
    return subprocess.Popen([*CURVEBENCH, *args], env=e, cwd=results.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(what: str, check: Callable[[], object], timeout: float = 240.0, poll: float = 0.1) -> object:
    print(f"{time.strftime('%H:%M:%S')} waiting for {what}", file=sys.stderr)
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def run_dir(results: Path, grid: str) -> Path:
    """The run directory under ``results`` whose path names the cell ``grid`` (e.g. ``if10-unif_prior0.4``)."""
    dirs = [p for p in results.glob(f"digits/digits-{grid}-*/ce/*/seed-1")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def job_of(d: Path) -> str | None:
    try:
        return json.loads((d / "slurm_job.json").read_text())["job_id"]
    except (OSError, ValueError, KeyError):
        return None


def checkpoint_epoch(d: Path) -> int | None:
    import torch

    try:
        return int(torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # noqa: BLE001 - not there (yet, or any more), or being replaced
        return None


def log_of(d: Path) -> str:
    path = Path(json.loads((d / "slurm_job.json").read_text())["log"])
    err = path.with_name(path.name.replace("_log.out", "_log.err"))
    return (path.read_text() if path.exists() else "") + (err.read_text() if err.exists() else "")


def squeue_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%T", "-j", job], capture_output=True, text=True)
    return out.stdout.strip()


def assert_quiet(text: str) -> None:
    """No accounting warnings, Hydra log lines or tracebacks reach the terminal."""
    for noise in ("sacct", "Bypassing", "accounting storage", "[HYDRA]", "Traceback", "WARNING"):
        assert noise not in text, text


def assert_identical(local: Path, slurm: Path, n: int) -> None:
    rows, ok = compare_trees(local, slurm)
    assert len(rows) == n and ok, rows


def test_suite_through_slurm_equals_local_runs_and_a_cancelled_job_resumes(cluster, env, tmp_path):
    suite = ["digits", "method=ce", "seed=1", "recipe.epochs=60"]
    slurm, local = tmp_path / "slurm", tmp_path / "local"
    launch = [*suite, "hydra/launcher=submitit_slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = curvebench(launch, env, slurm, wait=False)
    # plain scancel of one task while it trains: the job ends (SLURM does not requeue a cancelled job)
    victim = wait_for("a run with a checkpoint", lambda: next(
        (d for d in slurm.glob("digits/*/ce/*/seed-1") if (d / "checkpoint.pt").exists() and job_of(d)), None))
    job = job_of(victim)
    subprocess.run(["scancel", job], check=True)
    done = curvebench([*suite, "--no-progress"], env, local)  # the same runs, trained here
    assert done.returncode == 0, done.stderr
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, (out, err)
    assert re.search(rf"job {job}: cancelled", out), out
    assert "suite digits: 1 cancelled, 3 done" in out and "run the same command again to resume" in err, (out, err)
    assert_quiet(out + err)
    assert len((out + err).strip().splitlines()) == 8, out + err  # plan, submission, 4 jobs, summary, hint
    assert not (victim / "claim.json").exists()  # SIGTERM released the claim
    assert not (victim / "result.json").exists() and (victim / "checkpoint.pt").exists()
    stopped_at = checkpoint_epoch(victim)

    again = curvebench(launch, env, slurm)  # the same command: the cancelled run resumes, the others are skipped
    assert again.returncode == 0, again.stdout + again.stderr
    assert "suite digits: 1 done, 3 skipped" in again.stdout, again.stdout
    assert_quiet(again.stdout + again.stderr)
    assert f"resuming from the checkpoint after epoch {stopped_at + 1} of phase train" in log_of(victim)
    assert_identical(local, slurm, 4)


def test_preempted_and_timed_out_jobs_are_requeued_and_resume_to_the_same_result(cluster, env, tmp_path):
    slurm, local = tmp_path / "slurm", tmp_path / "local"
    preempted = ["digits", "method=ce", "seed=1", "split.imbalance_factor=10", "split.noise_rate=0.4",
                 "recipe.epochs=300"]
    # SLURM signals the time limit at 29-59 s into a 1-minute job: the run must train for longer than that
    calib = ["digits", "method=ce", "seed=1", "split.imbalance_factor=1", "split.noise_rate=0.4", "recipe.epochs=20"]
    assert curvebench([*calib, "--no-progress"], env, tmp_path / "calibration").returncode == 0
    history = json.loads(next((tmp_path / "calibration").rglob("history.json")).read_text())
    epochs = min(3000, max(300, int(75 / (history[-1]["elapsed_s"] / len(history)))))
    timed = ["digits", "method=ce", "seed=1", "split.imbalance_factor=1", "split.noise_rate=0.4",
             f"recipe.epochs={epochs}"]
    p = curvebench([*preempted, "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=20",
                    f"hydra.sweep.dir={tmp_path / 'sweep-p'}"], env, slurm, wait=False)
    # a 1-minute limit, SIGUSR2 before it (SLURM signals up to 30 s early, so at 29-59 s): requeued, resumed
    t = curvebench([*timed, "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=1",
                    "hydra.launcher.signal_delay_s=1", "hydra.launcher.max_num_timeout=8",
                    f"hydra.sweep.dir={tmp_path / 'sweep-t'}"], env, slurm, wait=False)
    d = wait_for("the first checkpoint", lambda: next(iter(slurm.glob("digits/digits-if10-*/ce/*/seed-1/checkpoint.pt")),
                                                      None)).parent
    job = job_of(d)
    # preemption as submitit sees it: SIGUSR2 -> checkpointed, requeued, resumed
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for("the requeued job to pend", lambda: squeue_state(job) == "PENDING", timeout=60)
    status = curvebench(["status", *preempted], env, slurm)
    assert re.search(rf"\s{job}\s+PENDING", status.stdout), status.stdout
    first = wait_for("the first resume", lambda: re.search(r"resuming from the checkpoint after epoch (\d+)",
                                                           log_of(d)), timeout=120)
    resumed_at = int(first.group(1))
    assert "restart 1" in log_of(d) and resumed_at > 0
    # preemption as SLURM does it (PreemptMode=REQUEUE, or an admin): scontrol requeue -> SIGTERM -> restarted
    def progressed() -> bool:
        assert not (d / "result.json").exists(), "the run finished before it could be requeued again"
        return (checkpoint_epoch(d) or 0) + 1 > resumed_at + 2

    wait_for("progress after the resume", progressed, timeout=120)
    subprocess.run(["scontrol", "requeue", job], check=True)
    for args in (preempted, timed):  # the same runs trained here, meanwhile
        assert curvebench([*args, "--no-progress"], env, local).returncode == 0
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and f"job {job}: done" in out, out + err
    assert_quiet(out + err)
    log = log_of(d)
    assert "this job is preempted" in log and "Requeued job" in log and "restart 2" in log, log
    assert "SIGTERM (scancel, requeue or preemption): releasing the run" in log, log

    out, err = t.communicate(timeout=900)
    assert t.returncode == 0 and "done" in out, out + err
    assert_quiet(out + err)
    log = log_of(run_dir(slurm, "if1-unif_prior0.4"))
    assert "this job is timed-out" in log and "Requeued job" in log, log
    assert re.search(r"resuming from the checkpoint after epoch [1-9]\d* of phase train", log), log
    assert_identical(local, slurm, 2)
