"""Engine behaviour: resume equivalence, NaN handling, skip-if-done, run directories, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from baselines.ce import CrossEntropy
from curvebench.run import run_planned
from curvebench.suites import plan_suite
from tests.helpers import assert_same_result, cli, records, reference_run, resumed_run, run_dirs

DIGITS_CE = ["method=ce", "seed=1", "split.imbalance_factor=10", "split.noise_rate=0.4", "recipe.epochs=3",
             "train.deterministic=true"]


def test_interrupted_run_resumes_to_the_same_result(workdirs, tmp_path, monkeypatch):
    reference, ref_weights = reference_run(DIGITS_CE)
    # killed after epoch 1, then after epoch 2 of the resumed run (each time: a checkpoint, no result)
    plan2 = resumed_run(DIGITS_CE, tmp_path / "again", monkeypatch, (1, 1))
    assert plan2.config_hash == reference["config_hash"] and plan2.run_dir != Path(reference["run_id"])
    assert_same_result(plan2.run_dir, reference, ref_weights)


def test_nan_loss_stops_the_run_and_names_epoch_and_cause(workdirs, monkeypatch):
    original = CrossEntropy.train_step

    def nan_in_epoch_1(self, batch, phase, epoch):
        out = original(self, batch, phase, epoch)
        return {"loss": out["loss"] * float("nan")} if epoch == 1 else out

    monkeypatch.setattr(CrossEntropy, "train_step", nan_in_epoch_1)
    assert cli("digits", *DIGITS_CE) == 1
    (failed,) = records(workdirs["results"], "failed.json")
    assert failed["status"] == "failed" and failed["failure"]["epoch"] == 1
    assert "non-finite training loss" in failed["failure"]["cause"]
    assert not list(workdirs["results"].rglob("result.json"))
    (run_dir,) = run_dirs(workdirs["results"])
    before = (run_dir / "failed.json").read_text()
    assert cli("digits", *DIGITS_CE) == 1  # reported again, never overwritten
    assert (run_dir / "failed.json").read_text() == before
    monkeypatch.setattr(CrossEntropy, "train_step", original)
    assert cli("digits", *DIGITS_CE, "--retry-failed") == 0
    assert (run_dir / "failed-1.json").read_text() == before and (run_dir / "result.json").exists()


def test_finished_runs_are_skipped(workdirs):
    assert cli("digits", *DIGITS_CE) == 0
    (path,) = list(workdirs["results"].rglob("result.json"))
    stamp = path.stat().st_mtime_ns
    (plan,) = plan_suite("digits", DIGITS_CE)
    assert run_planned(plan) == "skipped"
    assert cli("digits", *DIGITS_CE) == 0
    assert path.stat().st_mtime_ns == stamp


def test_the_same_config_always_gives_the_same_directory(workdirs):
    (a,), (b,) = plan_suite("digits", DIGITS_CE), plan_suite("digits", DIGITS_CE)
    assert a.run_dir == b.run_dir and a.config_hash == b.config_hash
    (cpu,) = plan_suite("digits", DIGITS_CE + ["train.device=cpu", "train.progress=false"])
    assert cpu.run_dir == a.run_dir, "device and progress bars do not change what is trained"
    (seed2,) = plan_suite("digits", [o if o != "seed=1" else "seed=2" for o in DIGITS_CE])
    assert seed2.config_hash == a.config_hash and seed2.run_dir != a.run_dir
    (lr,) = plan_suite("digits", DIGITS_CE + ["recipe.lr=0.01"])
    assert lr.config_hash != a.config_hash and lr.run_dir != a.run_dir
    assert str(a.run_dir).startswith(str(workdirs["results"]))


@pytest.mark.parametrize("args, message", [
    (["digits", "method=nope"], "unknown method 'nope'; available: "),  # lists every registered method
    (["digits", "model=nope"], "unknown model 'nope'"),
    (["nope"], "unknown suite 'nope'; available:"),
    (["digits", "recipe.epochs=-3"], "recipe.epochs must be a positive integer, got -3"),
    (["digits", "recipe.epohcs=3"], "unknown config key 'recipe.epohcs'"),
    (["digits", "split.noise_rate=1.5", "method=ce"], "noise_rate"),
    (["cifar10", "method=ce"], "needs a GPU"),
])
def test_bad_input_gets_a_clear_error(workdirs, capsys, args, message):
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(workdirs["results"].rglob("*.json"))


def test_dry_run_lists_the_runs_and_trains_nothing(workdirs, capsys):
    assert cli("digits", "method=ce", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "12 runs in suite 'digits'" in out and "split.noise_rate=0.4" in out
    assert not list(workdirs["results"].rglob("*"))


def test_overrides_narrow_the_grid(workdirs):
    runs = plan_suite("digits", ["method=ce", "seed=1,2", "split.noise_rate=0.4"])
    assert sorted((r.grid["split.imbalance_factor"], r.grid["seed"]) for r in runs) == [(1, 1), (1, 2), (10, 1), (10, 2)]


def test_result_records_provenance(workdirs):
    assert cli("digits", *DIGITS_CE) == 0
    (rec,) = records(workdirs["results"])
    assert rec["env"]["torch"] == torch.__version__ and rec["env"]["device"] == "cpu"
    assert len(rec["config_hash"]) == 64 and len(rec["split_sha256"]) == 64
    m = rec["metrics"]
    assert len(m["top1_per_epoch"]) == 3 and m["top1_best"] == max(m["top1_per_epoch"])
    assert m["top1_last"] == m["top1_per_epoch"][-1] and len(m["per_class_last"]) == 10
    assert set(m["shot_last"]) == {"many", "medium", "few"}
    assert json.dumps(rec)  # plain JSON


def test_run_files_are_readable_by_the_team(workdirs):
    """Atomic writes go through mkstemp (private 0600); results must get ordinary permissions."""
    import os
    import stat

    assert cli("digits", *DIGITS_CE) == 0
    mask = os.umask(0)
    os.umask(mask)
    (run_dir,) = run_dirs(workdirs["results"])
    for name in ("result.json", "config.yaml", "history.json", "model.pt"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o666 & ~mask, name
    for split_file in workdirs["splits"].rglob("*.*"):
        assert stat.S_IMODE(split_file.stat().st_mode) == 0o666 & ~mask, split_file


def test_fast_planning_equals_full_hydra_composition(workdirs):
    from curvebench.suites import plan_run

    runs = plan_suite("digits", ["method=ce", "recipe.epochs=4"])
    assert len(runs) == 12
    for run in runs[::5]:
        full = plan_run(run.overrides, run.grid)
        assert full.config == run.config and full.run_dir == run.run_dir
