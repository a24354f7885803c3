"""The CLI a person types: one-line errors (exit 2, nothing written) and the commands around a suite.

Sections: CLI errors (issue 11 §3: device, leaderboard output, closed pipes) and the CLI (§4: flags
anywhere, --show-config, --version, list, the leaderboard's outputs, suite summaries, progress,
workers, adding a method). Planning errors get their own section.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from curvebench import workers
from curvebench.cli import main
from curvebench.engine.method import METHODS
from curvebench.engine.records import config_hash
from curvebench.methods import load_all_methods
from curvebench.suites import plan_suite

ROOT = Path(__file__).resolve().parents[1]
LB_FIXTURE_RESULTS = ROOT / "tests" / "fixtures" / "leaderboard" / "results"
ONE_CELL = ["split.imbalance_factor=10", "split.noise_rate=0.4"]
ONE_CE_RUN = ["method=ce", "seed=1", *ONE_CELL, "recipe.epochs=1"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ==============================================================================================
# CLI errors (issue 11 §3): one line that says what to do, exit 2, nothing written
# ==============================================================================================
def test_device_cuda_without_cuda_is_one_line(workdirs, no_cuda, capsys):
    assert main(["digits", *ONE_CE_RUN, "--device", "cuda", "--no-progress"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "CUDA" in line and "--device cpu" in line
    assert not _files(workdirs["results"])


def test_gpus_without_cuda_fails_once_in_the_parent(workdirs, no_cuda, capsys, monkeypatch):
    def no_spawn(*a, **k):
        raise AssertionError("no worker may start")

    monkeypatch.setattr(workers, "spawn_workers", no_spawn)
    assert main(["digits", *ONE_CE_RUN, "--workers", "2", "--gpus", "0,1", "--no-progress"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--gpus" in line and "CUDA" in line
    assert not _files(workdirs["results"])


def test_leaderboard_output_under_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "FILE"
    blocker.write_text("not a directory\n")
    assert main(["leaderboard", str(LB_FIXTURE_RESULTS), "-o", str(blocker / "LB.md"), "--no-figures"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(blocker) in line and "is a file" in line
    assert _files(tmp_path) == [blocker] and blocker.read_text() == "not a directory\n"


def test_leaderboard_output_that_is_a_directory_is_one_line(tmp_path, capsys):
    assert main(["leaderboard", str(LB_FIXTURE_RESULTS), "-o", str(tmp_path), "--no-figures"]) == 2
    assert "is a directory" in _one_line_error(capsys.readouterr().err)
    assert not _files(tmp_path)


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"]])
def test_help_into_a_closed_pipe_is_silent(args):
    proc = subprocess.Popen([sys.executable, "-m", "curvebench.cli", *args], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head -3` does once it has its lines: every write now fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


# ==============================================================================================
# The CLI (issue 11 §4)
# ==============================================================================================
# -- flags anywhere -----------------------------------------------------------------------------
def test_flags_between_and_after_overrides(workdirs, capsys):
    assert main(["digits", "--dry-run", "method=ce", "seed=1"]) == 0
    out = capsys.readouterr().out
    assert "4 runs in suite 'digits'" in out
    assert main(["digits", "method=ce", "--device", "cpu", "seed=1", "--dry-run"]) == 0
    assert "4 runs in suite 'digits' on cpu" in capsys.readouterr().out
    assert main(["status", "digits", "--runs", "method=ce", "seed=1"]) == 0
    assert "4 runs: 0 done" in capsys.readouterr().out
    assert main(["splits", "--check", "digits", "method=ce", "seed=1", *ONE_CELL]) == 0
    assert not _files(workdirs["results"])


def test_device_flag_between_overrides_is_parsed(workdirs, no_cuda, capsys):
    assert main(["digits", "--device", "cuda", "method=ce", "seed=1"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err and "CUDA" in err


# -- the typo hint and --show-config -------------------------------------------------------------
def test_unknown_key_hint_is_true(workdirs, capsys):
    assert main(["digits", "recipe.lrr=0.1", "--dry-run"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "recipe.lrr=0.1" in line and "method=cb" not in line and "experiment=" not in line
    command = re.search(r"`curvebench ([^`]+)`", line).group(1).split()
    assert "--show-config" in command
    assert main([*command, "method=ce", "seed=1", *ONE_CELL]) == 0  # the hinted command works
    assert "lr:" in capsys.readouterr().out


def test_show_config_prints_every_planned_run(workdirs, capsys):
    assert main(["digits", "method=ce,focal", "seed=1", *ONE_CELL, "--show-config"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["method"]["name"] for d in docs] == ["ce", "focal"]
    assert docs[0]["split"]["imbalance_factor"] == 10 and docs[0]["recipe"]["lr"] > 0
    assert not _files(workdirs["results"]) and not _files(workdirs["splits"])


# -- --version, status and list without a suite --------------------------------------------------
def test_version(capsys):
    from curvebench import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"curvebench {__version__}")


@pytest.mark.parametrize("argv", [["status"], ["splits"], ["--dry-run"]])
def test_commands_without_a_suite_say_what_to_do(argv, capsys):
    assert main(argv) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "required" not in line and "SUITE" in line and "digits" in line and "curvebench list" in line


def test_list_shows_descriptions_and_gpu_needs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in out.splitlines() if line.strip()}
    assert rows["digits"][0] == "no" and rows["digits"][1].startswith("every built-in method")
    assert rows["cifar10"][0] == "yes" and "CIFAR-10" in rows["cifar10"][1]
    assert main(["list", "digits"]) == 0
    out = capsys.readouterr().out
    assert "needs a GPU: no" in out and "156 runs" in out


def test_suite_description_is_not_in_the_config_hash():
    """The committed digits records (leaderboard/runs) keep their config hashes."""
    plans = plan_suite("digits")
    committed = {json.loads(p.read_text())["config_hash"]
                 for p in (ROOT / "leaderboard" / "runs" / "digits").rglob("result.json")}
    assert {p.config_hash for p in plans} == committed
    config = json.loads(json.dumps(plans[0].config))
    config["suite"]["description"] = "another description"
    assert config_hash(config) == plans[0].config_hash


# -- the leaderboard: default output, byte-identical rebuilds, --check ---------------------------
def test_bare_leaderboard_never_writes_the_published_files(tmp_path, monkeypatch, capsys):
    published = tmp_path / "leaderboard"
    (published / "figures").mkdir(parents=True)
    for name in ("LEADERBOARD.md", "runs.csv", "cells.csv", "figures/fig1_loss_curves.png"):
        (published / name).write_text("published\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CURVEBENCH_RESULTS", str(LB_FIXTURE_RESULTS))
    # the fixture tree holds two damaged records on purpose: they are listed, the exit status is kept 0
    assert main(["leaderboard", "--no-figures", "--allow-unreadable"]) == 0
    assert all(p.read_text() == "published\n" for p in _files(published))
    assert (tmp_path / "leaderboard-out" / "LEADERBOARD.md").read_text().startswith("# curvebench leaderboard")
    assert "wrote leaderboard-out/LEADERBOARD.md" in capsys.readouterr().out


def _published_copy(tmp_path: Path) -> Path:
    """The published leaderboard in ``tmp_path/leaderboard``, its records linked, for --check."""
    copy = tmp_path / "leaderboard"
    copy.mkdir()
    for name in ("LEADERBOARD.md", "runs.csv", "cells.csv"):
        shutil.copy(ROOT / "leaderboard" / name, copy / name)
    shutil.copytree(ROOT / "leaderboard" / "figures", copy / "figures")
    (copy / "runs").symlink_to(ROOT / "leaderboard" / "runs")
    return copy


def test_published_leaderboard_is_current_and_check_sees_changes(tmp_path, monkeypatch, capsys):
    copy = _published_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    check = ["leaderboard", "leaderboard/runs", "-o", "leaderboard/LEADERBOARD.md", "--check"]
    before = {p: p.read_bytes() for p in _files(copy) if "runs" not in p.relative_to(copy).parts}
    assert main(check) == 0, capsys.readouterr().err
    assert "is current" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in before} == before  # --check writes nothing
    (copy / "cells.csv").write_text((copy / "cells.csv").read_text() + "x\n")
    (copy / "figures" / "fig5_weights_digits.png").unlink()
    assert main(check) == 1
    err = capsys.readouterr().err
    assert "cells.csv" in err and "fig5_weights_digits.png (missing)" in err and "LEADERBOARD.md," not in err


def test_rebuilds_are_byte_identical_and_dated_by_the_records(tmp_path, monkeypatch):
    copy = _published_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    published = {p.relative_to(copy): p.read_bytes() for p in _files(copy) if "runs" not in p.relative_to(copy).parts}
    assert main(["leaderboard", "leaderboard/runs", "-o", "leaderboard/LEADERBOARD.md"]) == 0
    rebuilt = {p.relative_to(copy): p.read_bytes() for p in _files(copy) if "runs" not in p.relative_to(copy).parts}
    assert rebuilt == published  # markdown, CSVs and figures
    header = (copy / "LEADERBOARD.md").read_text().splitlines()[4]
    import datetime as dt

    recs = [json.loads(p.read_text()) for p in (ROOT / "leaderboard" / "runs").rglob("result.json")]
    latest = max(dt.datetime.fromisoformat(r["finished"]) for r in recs).strftime("%Y-%m-%d %H:%M UTC")
    shas = {r["env"]["git_sha"][:12] for r in recs}
    assert latest in header and all(sha in header for sha in shas)  # dated by the records, not the clock


# -- a finished suite, progress output ------------------------------------------------------------
def test_finished_suite_prints_what_it_trained(workdirs, capsys):
    assert main(["digits", *ONE_CE_RUN, "--no-progress"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("trained now"):].splitlines()
    assert re.split(r"\s{2,}", table[1].strip()) == ["method", "cell", "seed", "last", "best"]
    method, cell, seed, last, best = re.split(r"\s{2,}", table[3].strip())
    record = json.loads(next(workdirs["results"].rglob("result.json")).read_text())
    assert (method, cell, seed) == ("ce", "imbalance_factor=10 noise_rate=0.4", "1")
    assert float(last) == pytest.approx(record["metrics"]["top1_last"], abs=0.01)
    assert float(best) == pytest.approx(record["metrics"]["top1_best"], abs=0.01)
    assert main(["digits", *ONE_CE_RUN, "--no-progress"]) == 0
    assert "trained now" not in capsys.readouterr().out  # nothing new


def test_progress_into_a_pipe_has_no_carriage_returns(workdirs, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE")
    assert main(["digits", *ONE_CE_RUN]) == 0  # captured output is not a terminal
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
    assert re.search(r"^done\s+1/1 .* seed=1$", captured.out, re.M)  # one line per run instead


def test_progress_label_keeps_the_seed(workdirs, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars on, as on a terminal
    assert main(["digits", *ONE_CE_RUN]) == 0
    assert "imbalance_factor=10 noise_rate=0.4 seed=1" in capsys.readouterr().err


# -- workers ------------------------------------------------------------------------------------
KILLED_WORKER = """
import os, signal, sys
from pathlib import Path
from curvebench.workers import try_claim
try_claim(Path(sys.argv[1]), worker="w1")
os.kill(os.getpid(), signal.SIGKILL)  # dies holding the claim, as an OOM-killed worker does
"""


def test_parent_names_the_run_of_a_killed_worker(workdirs, capsys, monkeypatch):
    overrides = ["method=ce", "seed=1,2", *ONE_CELL, "recipe.epochs=1"]
    held = plan_suite("digits", overrides)[1]

    def spawn(n, child, gpus):
        return [subprocess.Popen([sys.executable, "-c", KILLED_WORKER, str(held.run_dir)], env=_env(), cwd=ROOT)]

    monkeypatch.setattr(workers, "spawn_workers", spawn)
    assert main(["digits", *overrides, "--workers", "2"]) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("worker "))
    assert "w1 was killed by SIGKILL" in line and held.label in line and str(held.run_dir) in line
    assert "2 runs are not finished" in err


def test_worker_exit_without_a_claim():
    assert workers.describe_worker_exit(1, 2, []) == (
        "worker w2 exited with status 2 (an error it printed above)")
    assert workers.describe_worker_exit(2, -15, []) == (
        "worker w3 was killed by SIGTERM; run the same command again to resume")


# -- adding a method ------------------------------------------------------------------------------
@pytest.fixture
def methods(monkeypatch):
    load_all_methods()
    return monkeypatch


def test_registered_method_without_yaml(methods, workdirs, capsys):
    methods.setitem(METHODS._items, "my_method", METHODS.get("ce"))
    assert main(["digits", "seed=1", *ONE_CELL, "--dry-run"]) == 0  # method: [all] still plans
    captured = capsys.readouterr()
    assert "13 runs" in captured.out and "curvebench/conf/method/my_method.yaml" in captured.err
    assert main(["digits", "method=my_method", "--dry-run"]) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert "add curvebench/conf/method/my_method.yaml" in line


def test_method_yaml_without_module_line(methods, workdirs, capsys):
    methods.delitem(METHODS._items, "focal")
    assert main(["digits", "seed=1", *ONE_CELL, "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "12 runs" in captured.out and "METHOD_MODULES" in captured.err
    assert main(["digits", "method=focal", "--dry-run"]) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert "METHOD_MODULES in curvebench/methods.py" in line and "focal.yaml" in line


# ==============================================================================================
# Planning errors (issue 11 §1): fixable causes are checked before any run trains, write no run
# record, and the same command trains once the cause is fixed
# ==============================================================================================
from curvebench.data.synthetic import write_synthetic_cifar  # noqa: E402
from tests.helpers import cli, records  # noqa: E402

ONE_RUN = ["method=ce", "seed=1", "split.imbalance_factor=1", "split.noise_rate=0.0", "recipe.epochs=1",
           "train.limit_batches=1"]


def _record_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if p.name.startswith(("failed", "result")))


def _planning_error(err: str) -> str:
    line = _one_line_error(err.strip())
    assert line.startswith("curvebench: error: "), line
    return line

def test_missing_dataset_stops_the_suite_then_trains_once_the_data_is_there(workdirs, capsys):
    args = ["--allow-cpu", "cifar10", *ONE_RUN, "model=resnet8", "dataset.verify_md5=false",
            "split.meta_per_class=10"]
    assert cli(*args) == 2
    line = _planning_error(capsys.readouterr().err)
    assert str(workdirs["data"]) in line
    assert _record_files(workdirs["results"]) == [], "a missing dataset is not a failed run"
    write_synthetic_cifar(workdirs["data"], train_per_class=40, test_per_class=5)  # the user adds the data
    assert cli(*args) == 0
    (rec,) = records(workdirs["results"])
    assert rec["status"] == "done"


@pytest.mark.parametrize("override, says", [
    ("train.num_threads=abc", "train.num_threads"),
    ("train.num_threads=0", "train.num_threads"),
    ("recipe.optimizer=adamx", "recipe.optimizer"),
    ("recipe.schedule=foo", "recipe.schedule"),
    ("recipe.lr=abc", "recipe.lr"),
    ("recipe.momentum=fast", "recipe.momentum"),
    ("method=", "method= needs a value"),
    ("model=", "model= needs a value"),
])
def test_bad_config_values_are_one_line_errors_and_write_nothing(workdirs, capsys, override, says):
    assert cli("digits", *ONE_RUN, override) == 2
    assert says in _planning_error(capsys.readouterr().err)
    assert not any(workdirs["results"].iterdir())


def test_too_large_meta_set_is_an_error_before_training(workdirs, capsys):
    assert cli("digits", *ONE_RUN, "split.meta_per_class=5000") == 2
    assert "meta_per_class=5000 is too large" in _planning_error(capsys.readouterr().err)
    assert _record_files(workdirs["results"]) == []


def test_damaged_stored_split_is_an_error_before_training(workdirs, capsys):
    assert cli("splits", "digits", *ONE_RUN) == 0
    (npz,) = (workdirs["splits"] / "digits").glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:-10])
    capsys.readouterr()
    assert cli("digits", *ONE_RUN) == 2
    assert "stored split is damaged" in _planning_error(capsys.readouterr().err)
    assert _record_files(workdirs["results"]) == []


@pytest.mark.parametrize("which", ["results", "splits"])
def test_a_path_that_is_a_file_is_an_error(workdirs, monkeypatch, capsys, tmp_path, which):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(f"CURVEBENCH_{which.upper()}", str(blocker))
    assert cli("digits", *ONE_RUN) == 2
    line = _planning_error(capsys.readouterr().err)
    assert f"{blocker} is a file" in line and f"CURVEBENCH_{which.upper()}" in line
    assert blocker.read_text() == ""
    assert _record_files(tmp_path) == []


def test_a_read_only_results_root_is_an_error(workdirs, tmp_path):
    """Root ignores file modes, so as root the directory is made read-only by a private mount."""
    results = workdirs["results"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "curvebench.cli", "digits", *ONE_RUN, "--no-progress"]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("as root a read-only directory needs unshare(1) for a private read-only mount")
        script = f'mount --bind -o ro "{results}" "{results}" && exec "$@"'
        probe = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", "true"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip(f"no private mounts here: {probe.stderr.decode().strip()}")
        command = ["unshare", "-m", "sh", "-c", script, "sh", *command]
    else:
        results.chmod(0o555)
    try:
        proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        results.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert "not writable" in _planning_error(proc.stderr)
    assert not any(results.iterdir())


def test_failures_an_earlier_version_recorded_for_setup_causes_are_not_permanent(workdirs, capsys):
    """Old code wrote failed.json when the data was missing; once the data is there the run trains."""
    (plan,) = plan_suite("digits", ONE_RUN)
    assert cli("digits", *ONE_RUN) == 0  # a real record to doctor into an old setup failure
    run_dir = plan.run_dir
    done = json.loads((run_dir / "result.json").read_text())
    setup_failure = {**done, "status": "failed", "split_sha256": "0" * 64,
                     "failure": {"phase": "?", "epoch": -1, "cause": "DataError: no dataset"}}
    del setup_failure["metrics"]
    (run_dir / "result.json").unlink()
    (run_dir / "failed.json").write_text(json.dumps(setup_failure))
    capsys.readouterr()
    assert cli("digits", *ONE_RUN) == 0
    assert "failure outside training" in capsys.readouterr().err
    assert (run_dir / "result.json").exists() and not (run_dir / "failed.json").exists()
    assert json.loads((run_dir / "failed.setup-1.json").read_text())["failure"]["cause"] == "DataError: no dataset"
