"""Run claims and workers: exclusive claims across processes, reclaiming dead workers' runs, status."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from curvebench import workers
from curvebench.engine.rundir import CLAIM_FILE
from curvebench.workers import read_claim, try_claim
from tests.helpers import cli, valid_record_text

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CE = ["method=ce", "recipe.epochs=1", "split.noise_rate=0.4"]  # 2 cells x 3 seeds, one epoch each


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, **kw)


HOLD = """
    import sys, time
    from curvebench.workers import try_claim
    claim = try_claim(sys.argv[1], worker="holder")
    print("claimed" if claim else "busy", flush=True)
    if claim:
        with claim:
            time.sleep(600)
"""


def _fake_claim(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {"token": "x" * 32, "host": "node-elsewhere", "boot_id": "b", "pid_ns": "pid:[1]", "pid": 4242,
            "pid_start": "1", "worker": "w9", "gpu": None, "slurm_job": None, "started": "2026-01-01T00:00:00+00:00",
            "heartbeat": time.time(), "heartbeat_iso": ""}
    data.update(fields)
    (run_dir / CLAIM_FILE).write_text(json.dumps(data))


# -- claims -------------------------------------------------------------------------------------
def test_a_claim_is_exclusive_until_released(tmp_path):
    first = try_claim(tmp_path / "run")
    assert first is not None
    assert try_claim(tmp_path / "run") is None  # this very process holds it: alive
    info = read_claim(tmp_path / "run")
    assert info.alive and info.data["pid"] == os.getpid() and info.data["host"] == socket.gethostname()
    assert {"started", "heartbeat", "pid_start", "boot_id"} <= set(info.data)
    first.release()
    assert not (tmp_path / "run" / CLAIM_FILE).exists()
    assert try_claim(tmp_path / "run") is not None


def test_two_processes_racing_for_the_same_runs_never_share_one(tmp_path):
    code = """
        import sys, time
        from curvebench.workers import try_claim
        root, start = sys.argv[1], float(sys.argv[2])
        while time.time() < start:
            pass
        won = [i for i in range(40) if try_claim(f"{root}/run-{i}", worker=sys.argv[3]) is not None]
        print(" ".join(map(str, won)), flush=True)
        # stay alive until the other process is done too: a dead owner's claims are fair game
        open(f"{root}/done-{sys.argv[3]}", "w").close()
        deadline = time.time() + 120
        while time.time() < deadline and len([1 for w in "ab" if __import__("os").path.exists(f"{root}/done-{w}")]) < 2:
            time.sleep(0.05)
    """
    start = str(time.time() + 2.0)  # both start together, after their imports
    procs = [_python(code, str(tmp_path), start, name) for name in ("a", "b")]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    a, b = ({int(x) for x in out.split()} for out in outs)
    assert not a & b, f"runs claimed twice: {sorted(a & b)}"
    assert a | b == set(range(40))


def test_a_run_held_by_a_live_process_is_left_alone_and_a_dead_ones_is_reclaimed(tmp_path):
    run = tmp_path / "run"
    holder = _python(HOLD, str(run))
    try:
        assert holder.stdout.readline().strip() == "claimed"
        info = read_claim(run)
        assert info.alive and info.data["pid"] == holder.pid and info.data["worker"] == "holder"
        assert try_claim(run) is None
        assert workers.live_status(run) == "running"
    finally:
        holder.send_signal(signal.SIGKILL)
    time.sleep(0.2)  # killed but not reaped yet: a zombie counts as dead
    assert (run / CLAIM_FILE).exists() and not read_claim(run).alive
    holder.wait()
    assert "is gone" in read_claim(run).reason
    assert workers.live_status(run) == "interrupted"
    claim = try_claim(run, worker="me")
    assert claim is not None and read_claim(run).data["pid"] == os.getpid()
    claim.release()


def test_other_hosts_claims_live_while_their_heartbeat_is_fresh(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _fake_claim(run, heartbeat=time.time() - 10)
    assert try_claim(run, stale=300) is None
    _fake_claim(run, heartbeat=time.time() - 400)
    info = read_claim(run, stale=300)
    assert not info.alive and "heartbeat 400 s ago" in info.reason
    claim = try_claim(run, stale=300)
    assert claim is not None and claim.data["host"] == socket.gethostname()
    claim.release()
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # a requeued SLURM job takes its own fresh claim back
    _fake_claim(run, slurm_job="777")
    claim = try_claim(run, stale=300)
    assert claim is not None and claim.data["slurm_job"] == "777"
    claim.release()


def test_breaking_a_dead_claim_never_removes_a_fresh_one(tmp_path):
    run = tmp_path / "run"
    _fake_claim(run, heartbeat=time.time() - 400)
    dead = read_claim(run, stale=300)
    assert not dead.alive
    _fake_claim(run, token="y" * 32)  # another worker reclaimed it meanwhile
    assert workers._break_dead_claim(dead) is False
    assert json.loads((run / CLAIM_FILE).read_text())["token"] == "y" * 32
    (run / (CLAIM_FILE + ".break")).write_text("someone")  # another breaker at work
    _fake_claim(run, heartbeat=time.time() - 400)
    assert workers._break_dead_claim(read_claim(run, stale=300)) is False
    assert (run / CLAIM_FILE).exists()


def test_heartbeat_refreshes_and_a_lost_claim_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CURVEBENCH_HEARTBEAT", "0.05")
    run = tmp_path / "run"
    claim = try_claim(run)
    with claim:
        beat0 = claim.data["heartbeat"]
        time.sleep(0.3)
        assert read_claim(run).data["heartbeat"] > beat0
    assert not (run / CLAIM_FILE).exists()
    claim = try_claim(run)
    with pytest.raises(KeyboardInterrupt):
        with claim:
            _fake_claim(run, token="z" * 32)  # taken over by another worker
            for _ in range(100):
                time.sleep(0.05)
    assert claim.lost
    assert json.loads((run / CLAIM_FILE).read_text())["token"] == "z" * 32  # not removed on exit


# -- workers end to end -------------------------------------------------------------------------
@pytest.mark.slow
def test_two_worker_processes_split_a_suite_and_each_run_is_trained_once(workdirs):
    from curvebench.suites import plan_suite

    runs = plan_suite("digits", DIGITS_CE)
    assert len(runs) == 6
    proc = subprocess.run([sys.executable, "-m", "curvebench.cli", "digits", *DIGITS_CE, "--workers", "2"],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"\[w[12]\] done ", ln)]
    trained = {}
    for ln in lines:
        name, label = ln[1:3], ln.split(" s  ", 1)[1]
        assert label not in trained, f"{label} trained by {trained[label]} and {name}"
        trained[label] = name
    assert set(trained) == {r.label for r in runs}
    assert set(trained.values()) == {"w1", "w2"}, "both workers trained runs"
    assert all((r.run_dir / "result.json").exists() and not (r.run_dir / CLAIM_FILE).exists() for r in runs)
    assert "suite digits: 6 done" in proc.stdout


def test_a_run_claimed_by_a_dead_worker_is_reclaimed_by_the_next_invocation(workdirs, capsys):
    from curvebench.suites import plan_suite

    (plan,) = plan_suite("digits", [*DIGITS_CE, "seed=1", "split.imbalance_factor=1"])
    holder = _python(HOLD, str(plan.run_dir))
    assert holder.stdout.readline().strip() == "claimed"
    holder.kill()
    holder.wait()
    assert (plan.run_dir / CLAIM_FILE).exists()
    assert cli("digits", *DIGITS_CE, "seed=1", "split.imbalance_factor=1") == 0
    assert (plan.run_dir / "result.json").exists() and not (plan.run_dir / CLAIM_FILE).exists()
    assert "1 done" in capsys.readouterr().out


def test_a_worker_waits_for_a_live_claim_and_takes_over_when_its_owner_dies(workdirs, monkeypatch, capsys):
    from curvebench.suites import plan_suite

    runs = plan_suite("digits", [*DIGITS_CE, "seed=1"])
    held = runs[0]
    holder = _python(HOLD, str(held.run_dir))
    assert holder.stdout.readline().strip() == "claimed"
    threading.Timer(1.0, holder.kill).start()  # the owner dies while we wait for it
    events = []
    counts = workers.work(runs, poll=0.2, report=events.append)
    holder.wait()
    assert counts["done"] == 2
    assert [e.kind for e in events].count("wait") == 1
    ends = [e.plan.label for e in events if e.kind == "end"]
    assert ends[-1] == held.label, "the held run is trained last, after its owner died"


# -- status -------------------------------------------------------------------------------------
def test_status_shows_done_running_failed_and_missing_per_cell(workdirs, capsys):
    from curvebench.suites import plan_suite

    runs = plan_suite("digits", DIGITS_CE)
    by = {(r.grid["split.imbalance_factor"], r.grid["seed"]): r for r in runs}
    for seed in (1, 2, 3):
        d = by[(1, seed)].run_dir
        d.mkdir(parents=True)
        (d / "result.json").write_text(valid_record_text("done"))  # only a valid record counts as done
    (by[(10, 1)].run_dir).mkdir(parents=True)
    (by[(10, 1)].run_dir / "failed.json").write_text(valid_record_text("failed"))
    live = try_claim(by[(10, 2)].run_dir, worker="w7")
    (by[(10, 3)].run_dir).mkdir(parents=True)
    (by[(10, 3)].run_dir / "config.yaml").write_text("")  # started, nobody on it
    try:
        assert cli("status", "digits", *DIGITS_CE, "--runs") == 0
    finally:
        live.release()
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("imbalance_factor=")}
    assert rows["imbalance_factor=1"].split(None, 2)[2].strip() == "3/3 done"
    assert re.search(r"0/3 done, 1 running, 1 failed, 1 interrupted", rows["imbalance_factor=10"])
    assert "6 runs: 3 done, 1 running, 1 failed, 1 interrupted, 0 missing" in out
    assert re.search(r"running .* w7 ", out)


def test_status_table_cells_exclude_method_and_seed():
    class Plan:
        def __init__(self, method, grid):
            self.config, self.grid = {"method": {"name": method}}, grid

    runs = [Plan(m, {"method": m, "split.noise_rate": p, "seed": s}) for m in ("ce", "focal") for p in (0.0, 0.4)
            for s in (1, 2)]
    states = ["done", "done", "done", "missing", "done", "running", "failed", "missing"]
    headers, rows, totals = workers.status_table(runs, states)
    assert headers == ["cell", "ce", "focal"]
    assert rows == [["noise_rate=0.0", "2/2 done", "1/2 done, 1 running"],
                    ["noise_rate=0.4", "1/2 done", "0/2 done, 1 failed"]]
    assert workers.totals_line(totals) == "8 runs: 4 done, 1 running, 1 failed, 0 interrupted, 2 missing"


def test_worker_environment_round_robins_gpus_and_shares_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    envs = [workers.worker_env(i, 3, ["0", "1"]) for i in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
    assert all(int(e["OMP_NUM_THREADS"]) >= 1 for e in envs)
    assert "CUDA_VISIBLE_DEVICES" not in workers.worker_env(0, 2, [], base={})
    assert workers.parse_gpus("0, 1") == ["0", "1"]
