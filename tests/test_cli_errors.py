"""CLI and planning errors: a cause the user can fix stops the suite with one line and exit 2,
writes no run record, and the same command trains once the cause is fixed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curvenet.data.synthetic import write_synthetic_cifar
from tests.helpers import cli, records

ROOT = Path(__file__).resolve().parents[1]
ONE_RUN = ["method=ce", "seed=1", "split.imbalance_factor=1", "split.noise_rate=0.0", "recipe.epochs=1",
           "train.limit_batches=1"]


def _record_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if p.name.startswith(("failed", "result")))


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("curvebench: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- planning: fixable causes are checked before any run trains ----------------------------------
def test_missing_dataset_stops_the_suite_then_trains_once_the_data_is_there(workdirs, capsys):
    args = ["--allow-cpu", "cifar10", *ONE_RUN, "model=resnet8", "dataset.verify_md5=false",
            "split.meta_per_class=10"]
    assert cli(*args) == 2
    line = _one_line_error(capsys.readouterr().err)
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
    assert says in _one_line_error(capsys.readouterr().err)
    assert not any(workdirs["results"].iterdir())


def test_too_large_meta_set_is_an_error_before_training(workdirs, capsys):
    assert cli("digits", *ONE_RUN, "split.meta_per_class=5000") == 2
    assert "meta_per_class=5000 is too large" in _one_line_error(capsys.readouterr().err)
    assert _record_files(workdirs["results"]) == []


def test_damaged_stored_split_is_an_error_before_training(workdirs, capsys):
    assert cli("splits", "digits", *ONE_RUN) == 0
    (npz,) = (workdirs["splits"] / "digits").glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:-10])
    capsys.readouterr()
    assert cli("digits", *ONE_RUN) == 2
    assert "stored split is damaged" in _one_line_error(capsys.readouterr().err)
    assert _record_files(workdirs["results"]) == []


@pytest.mark.parametrize("which", ["results", "splits"])
def test_a_path_that_is_a_file_is_an_error(workdirs, monkeypatch, capsys, tmp_path, which):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(f"CURVEBENCH_{which.upper()}", str(blocker))
    assert cli("digits", *ONE_RUN) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"{blocker} is a file" in line and f"CURVEBENCH_{which.upper()}" in line
    assert blocker.read_text() == ""
    assert _record_files(tmp_path) == []


def test_a_read_only_results_root_is_an_error(workdirs, tmp_path):
    """Root ignores file modes, so as root the directory is made read-only by a private mount."""
    results = workdirs["results"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "curvenet.cli", "digits", *ONE_RUN, "--no-progress"]
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
    assert "not writable" in _one_line_error(proc.stderr)
    assert not any(results.iterdir())


def test_failures_an_earlier_version_recorded_for_setup_causes_are_not_permanent(workdirs, capsys):
    """Old code wrote failed.json when the data was missing; once the data is there the run trains."""
    import json

    from curvenet.suites import plan_suite

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
