"""The SLURM path without a cluster: one-line errors, job states from squeue, signals inside jobs, comparisons."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from curvebench import slurm
from curvebench.compare import compare_trees
from curvebench.suites import plan_suite
from tests.helpers import cli


def _fake_tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_submitit_slurm_without_slurm_is_one_line_and_writes_nothing(workdirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no sbatch anywhere
    monkeypatch.chdir(tmp_path)
    assert cli("digits", "method=ce", "seed=1", "hydra/launcher=submitit_slurm") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sbatch and srun and scontrol and squeue are not on PATH" in err, err
    assert "scripts/slurm-local.sh up" in err
    assert not (tmp_path / "multirun").exists() and not any(workdirs["results"].iterdir())


def test_submitit_slurm_with_a_dead_controller_is_one_line(workdirs, tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    for tool in ("sbatch", "srun", "squeue"):
        _fake_tool(bin_dir, tool, "exit 1\n")
    _fake_tool(bin_dir, "scontrol", "echo 'Slurmctld(primary) at vm is DOWN'; echo '*****'; echo '** RESTORE **'; "
                                    "echo '*****'; exit 1\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    assert cli("digits", "method=ce", "seed=1", "hydra/launcher=submitit_slurm") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(scontrol ping: Slurmctld(primary) at vm is DOWN)" in err, err
    assert "SLURM_CONF" in err
    assert not (tmp_path / "multirun").exists() and not any(workdirs["results"].iterdir())


def test_squeue_states_by_array_task_and_by_own_id(tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "squeue", "printf '5_0|7|RUNNING|None|vm\\n5_1|5|PENDING|Priority|\\n'\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    info = slurm.squeue(["5_0", "5_1"])
    assert info["5_0"]["State"] == "RUNNING" and info["7"] is info["5_0"]
    assert info["5_1"] == {"JobID": "5_1", "State": "PENDING", "Reason": "Priority", "NodeList": ""}
    _fake_tool(tmp_path / "bin", "squeue", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n")
    assert slurm.squeue(["9"]) == {}  # gone
    _fake_tool(tmp_path / "bin", "squeue", "echo 'Unable to contact slurm controller' >&2; exit 1\n")
    assert slurm.squeue(["9"]) is None  # unknown


def test_the_watcher_never_calls_sacct_and_ends_on_final_states(tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "sacct", "echo sacct-was-called >&2; exit 1\n")
    _fake_tool(tmp_path / "bin", "squeue", "printf '5_0|7|CANCELLED|None|vm\\n5_1|8|REQUEUED|None|vm\\n'\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    watcher = slurm._watcher_class()(delay_s=1)
    for job in ("5_0", "5_1", "5_2"):
        watcher.register_job(job)
    watcher.update()
    assert watcher.is_done("5_0", mode="cache") and not watcher.is_done("5_1", mode="cache")
    assert watcher.get_state("5_2", mode="cache") == "GONE" and watcher.is_done("5_2", mode="cache")


def test_status_shows_the_slurm_job_of_queued_and_running_runs(workdirs, tmp_path, monkeypatch, capsys):
    runs = plan_suite("digits", ["method=ce", "seed=1"])
    slurm.record_job(runs[0].run_dir, "5_0", tmp_path / "log")
    slurm.record_job(runs[1].run_dir, "5_1", tmp_path / "log")
    _fake_tool(tmp_path / "bin", "squeue", "printf '5_0|7|RUNNING|None|vm\\n5_1|5|PENDING|Priority|\\n'\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert cli("status", "digits", "method=ce", "seed=1") == 0
    out = capsys.readouterr().out
    assert "SLURM job" in out and "5_0  RUNNING" in out and "5_1  PENDING (Priority)" in out, out
    assert cli("status", "digits", "method=ce", "seed=1", "--runs") == 0
    assert "5_1 PENDING (Priority)" in capsys.readouterr().out


def test_launcher_records_each_job_in_its_run_directory(workdirs):
    runs = plan_suite("digits", ["method=ce", "seed=1"])
    slurm.expect_runs(runs)
    ovs = ["experiment=digits", "method=ce", "split.imbalance_factor=10", "split.noise_rate=0.4", "seed=1"]
    target = next(r for r in runs if r.grid["split.imbalance_factor"] == 10 and r.grid["split.noise_rate"] == 0.4)
    assert slurm._run_dir_of(ovs) == target.run_dir
    assert slurm._run_dir_of(["method=ce", "seed=1"]) is None  # names no single run


class _FakeSubmititHandler:
    """Stands in for submitit's SignalHandler (its module name is what job_signals recognises)."""

    __module__ = "submitit.core.job_environment"

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def checkpoint_and_try_requeue(self, signum, frame):
        raise self.error


@pytest.mark.parametrize("error, expected", [
    ("timed-out", slurm.TimedOut),  # submitit's UncompletedJobError: never an exception of the run
    (subprocess.CalledProcessError(-15, ["scontrol", "requeue", "5"]), SystemExit),  # scontrol hit by the requeue
])
def test_job_signals_never_let_a_requeue_look_like_a_failed_run(error, expected):
    from submitit.core.utils import UncompletedJobError

    if error == "timed-out":
        error = UncompletedJobError("Job not requeued because: timed-out too many times.")
    handler = _FakeSubmititHandler(error)
    before = signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    try:
        with slurm.job_signals():
            with pytest.raises(expected):
                try:
                    signal.raise_signal(signal.SIGUSR2)
                except Exception:  # what run_planned does with exceptions (failed.json): must not see it
                    pytest.fail("the signal surfaced as an Exception")
            if expected is SystemExit:  # requeued: the SIGTERM that SLURM sends next is expected, and ignored
                signal.raise_signal(signal.SIGTERM)
            else:
                with pytest.raises(KeyboardInterrupt):  # SIGTERM: the claim is released on the way out
                    signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGUSR2) == handler.checkpoint_and_try_requeue
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_job_signals_leave_processes_outside_submitit_alone():
    before = signal.getsignal(signal.SIGTERM)
    with slurm.job_signals():
        assert signal.getsignal(signal.SIGTERM) == before


def _fake_run(root: Path, top1: float, weight: float) -> Path:
    d = root / "digits" / "cell" / "ce" / "abc" / "seed-1"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({
        "config": {"seed": 1, "paths": {"results": str(root)}}, "started": str(root), "finished": "x",
        "wall_time_s": weight, "env": {"hostname": str(root)}, "run_id": str(d),
        "metrics": {"top1_last": top1, "top1_best": top1, "epochs": 1}, "diagnostics": {"time_meta_ms": weight}}))
    (d / "history.json").write_text(json.dumps([{"epoch": 0, "loss": 1.0, "elapsed_s": weight}]))
    torch.save({"model": {"w": torch.tensor([1.0, weight])}}, d / "model.pt")
    return d


def test_compare_ignores_the_occasion_and_sees_every_bit_of_training(tmp_path):
    _fake_run(tmp_path / "a", 90.0, 2.0)
    _fake_run(tmp_path / "b", 90.0, 2.0)
    rows, ok = compare_trees(tmp_path / "a", tmp_path / "b")
    assert ok and rows[0][1] == "identical"
    _fake_run(tmp_path / "c", 90.0, 2.0 + 2 ** -20)  # one weight differs in its last bits (and the timings)
    rows, ok = compare_trees(tmp_path / "a", tmp_path / "c")
    assert not ok and rows[0][1] == "DIFFERENT" and "model.pt[model][w]" in rows[0][2]
    _fake_run(tmp_path / "d", 90.2, 2.0)
    rows, ok = compare_trees(tmp_path / "a", tmp_path / "d")
    assert not ok and "result.json.metrics.top1_" in rows[0][2]
