"""Suites through Hydra launchers: sweeps = the suite's grid blocks; jobs write where the in-process runner would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import curvebench.suites as suites
from curvebench.launch import job_overrides, plan_for_job, split_overrides, sweeps, wants_launcher
from curvebench.suites import plan_suite
from tests.helpers import cli

ROOT = Path(__file__).resolve().parents[1]


class Point:
    def __init__(self, **grid):
        self.grid = grid


def test_sweeps_cover_exactly_the_planned_points():
    full = [Point(method=m, seed=s) for m in ("ce", "focal") for s in (1, 2, 3)]
    assert sweeps(full) == [["method=ce,focal", "seed=1,2,3"]]
    ragged = full[:4]  # ce x {1,2,3} + focal x {1}: not one product
    assert sweeps(ragged) == [["method=ce", "seed=1,2,3"], ["method=focal", "seed=1"]]
    blocks = [Point(method="ce", seed=1), Point(method="ce", **{"split.noise_rate": 0.4}, seed=1)]
    assert sweeps(blocks) == [["method=ce", "seed=1"], ["method=ce", "split.noise_rate=0.4", "seed=1"]]


def test_launcher_overrides_are_recognised():
    ovs = ["method=ce", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "seed=1"]
    assert wants_launcher(ovs) and not wants_launcher(["method=ce"])
    assert split_overrides(ovs) == (["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"],
                                    ["method=ce", "seed=1"])


@pytest.fixture
def two_block_suite(monkeypatch):
    """The digits suite with two grid blocks and per-method settings (as a suite file could have)."""
    original = suites.load_suite

    def load(name):
        suite = original(name)
        if name == "digits":
            OmegaConf.set_struct(suite, False)
            suite = OmegaConf.merge(suite, {
                "grid": [{"method": ["ce"], "seed": [1, 2]},
                         {"method": ["ce"], "split.noise_rate": [0.4], "seed": [1]}],
                "method_overrides": {"ce": ["recipe.epochs=2", "recipe.batch_size=32"]},
            })
        return suite

    monkeypatch.setattr(suites, "load_suite", load)


def test_each_job_plans_the_same_run_as_the_suite(workdirs, two_block_suite):
    runs = plan_suite("digits", ["recipe.lr=0.02"])
    assert len(runs) == 3 and all(r.cfg.recipe.epochs == 2 for r in runs)  # method_overrides applied
    groups = sweeps(runs)
    assert groups == [["method=ce", "seed=1,2"], ["method=ce", "split.noise_rate=0.4", "seed=1"]]
    common = job_overrides(runs, ["recipe.lr=0.02"])
    assert common[0] == "recipe.lr=0.02"
    assert f"paths.results='{workdirs['results']}'" in common
    jobs = [["method=ce", "seed=1"], ["method=ce", "seed=2"], ["method=ce", "split.noise_rate=0.4", "seed=1"]]
    for job, expected in zip(jobs, runs):
        plan = plan_for_job("digits", job + common)
        assert plan.run_dir == expected.run_dir and plan.config_hash == expected.config_hash
        assert plan.cfg.recipe.epochs == 2 and plan.cfg.recipe.lr == 0.02


def test_basic_launcher_runs_the_jobs_in_process_with_method_overrides(workdirs, two_block_suite, capsys):
    runs = plan_suite("digits", ["seed=1"])
    assert cli("digits", "seed=1", "hydra/launcher=basic", f"hydra.sweep.dir={workdirs['results'].parent}/sweep") == 0
    out = capsys.readouterr().out
    assert "2 runs in 2 sweep(s) through hydra/launcher=basic" in out and "suite digits: 2 done" in out
    for r in runs:
        record = json.loads((r.run_dir / "result.json").read_text())
        assert record["config_hash"] == r.config_hash and record["metrics"]["epochs"] == 2
    # re-submitting: every job finds its result and skips
    assert cli("digits", "seed=1", "hydra/launcher=basic", f"hydra.sweep.dir={workdirs['results'].parent}/sweep") == 0
    assert "suite digits: 2 skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_submitit_local_jobs_write_where_the_in_process_runner_would(workdirs, tmp_path, capsys):
    overrides = ["method=ce", "seed=2,3"]  # not in the grid (seed 1): run in its place
    runs = plan_suite("smoke", overrides)
    assert len(runs) == 2
    sweep_dir = tmp_path / "multirun"
    args = ["smoke", *overrides, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
            f"hydra.sweep.dir={sweep_dir}"]
    assert cli(*args) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "suite smoke: 2 done" in out
    for r in runs:
        record = json.loads((r.run_dir / "result.json").read_text())
        assert record["config_hash"] == r.config_hash and record["seed"] == r.cfg.seed
        assert Path(record["run_id"]).resolve() == r.run_dir.resolve()
        assert not (r.run_dir / "claim.json").exists()
    logs = list(sweep_dir.glob(".submitit/*/*_log.out"))
    assert len(logs) == 2 and any("curvebench job: method=ce seed=3" in p.read_text() for p in logs)


def test_launcher_options_that_make_no_sense_are_refused(workdirs, capsys):
    assert cli("smoke", "hydra/launcher=submitit_local", "--workers", "2") == 2
    assert "--workers" in capsys.readouterr().err
    assert cli("smoke", "hydra.launcher.partition=gpu") == 2
    assert "add hydra/launcher=submitit_slurm" in capsys.readouterr().err
