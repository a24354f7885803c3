"""Damaged files in a results or splits tree are never trusted and never a dead end: the file is
named, set aside (never deleted or overwritten), and the run continues from the last good state, is
re-trained, or the check fails."""

from __future__ import annotations

import json

import pytest
import torch

from curvebench import workers
from curvebench.engine.loop import Interrupted
from curvebench.engine.rundir import CLAIM_FILE, PREVIOUS_FILE
from curvebench.run import run_planned
from curvebench.suites import plan_suite
from curvebench.workers import read_claim, try_claim
from tests.helpers import assert_same_result, cli, interrupted_run, reference_run
from tests.test_engine import DIGITS_CE  # the resume tests' 3-epoch CE run


# ================================================================================================
# checkpoint.pt: damaged (truncated, emptied, garbage) -> set aside; resume from checkpoint.prev.pt
# or from scratch, saying which; never failed.json
# ================================================================================================
def _truncate(path, keep: float = 0.5) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path.read_bytes()


def test_the_checkpoint_exists_at_every_step_of_a_save(tmp_path, monkeypatch):
    """A signal between any two file operations of a save (a SLURM requeue) leaves checkpoint.pt."""
    import os

    from curvebench.engine.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"phase": "train", "epoch": 0})
    seen = []
    for name in ("replace", "link", "unlink", "rename"):
        real = getattr(os, name)

        def spy(*args, _real=real, _name=name, **kw):
            seen.append((_name, path.exists()))
            out = _real(*args, **kw)
            seen.append((_name, path.exists()))
            return out

        monkeypatch.setattr(os, name, spy)
    save_checkpoint(path, {"phase": "train", "epoch": 1})
    monkeypatch.undo()
    assert seen and all(exists for _, exists in seen), seen
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / PREVIOUS_FILE, weights_only=True)["epoch"] == 0


def test_the_previous_checkpoint_is_kept_until_the_next_is_complete(workdirs, tmp_path, monkeypatch):
    plan = interrupted_run(DIGITS_CE, tmp_path / "again", monkeypatch, 2)
    ckpt, prev = plan.run_dir / "checkpoint.pt", plan.run_dir / PREVIOUS_FILE
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert torch.load(prev, weights_only=True)["epoch"] == 0
    assert run_planned(plan) == "done"
    assert not ckpt.exists() and not prev.exists()  # the result replaces both


def test_truncated_checkpoint_resumes_from_the_previous_one_bit_identically(workdirs, tmp_path, monkeypatch,
                                                                             capsys):
    reference, ref_weights = reference_run(DIGITS_CE)
    plan = interrupted_run(DIGITS_CE, tmp_path / "again", monkeypatch, 2)  # checkpoint.pt: epoch 1, checkpoint.prev.pt: epoch 0
    ckpt = plan.run_dir / "checkpoint.pt"
    damaged = _truncate(ckpt)
    capsys.readouterr()

    assert run_planned(plan) == "done"
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "checkpoint" in ln]
    assert str(ckpt) in line and "damaged" in line and "set aside as checkpoint.pt.damaged-1" in line
    assert line.endswith(f"resuming from {PREVIOUS_FILE} (phase train, epoch 0)")
    assert (plan.run_dir / "checkpoint.pt.damaged-1").read_bytes() == damaged  # kept as it was
    assert not (plan.run_dir / "failed.json").exists()
    assert_same_result(plan.run_dir, reference, ref_weights)


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_only_checkpoint_restarts_from_scratch(workdirs, tmp_path, monkeypatch, capsys, damage):
    reference, ref_weights = reference_run(DIGITS_CE)
    plan = interrupted_run(DIGITS_CE, tmp_path / "again", monkeypatch, 1)  # one checkpoint, no previous one
    ckpt = plan.run_dir / "checkpoint.pt"
    assert not (plan.run_dir / PREVIOUS_FILE).exists()
    if damage == "truncate":
        _truncate(ckpt, 0.9)
    else:
        ckpt.write_bytes(b"" if damage == "empty" else b"not a checkpoint at all\n" * 10)
    bad = ckpt.read_bytes()
    capsys.readouterr()

    assert run_planned(plan) == "done"
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "checkpoint" in ln]
    assert str(ckpt) in line and "damaged" in line and line.endswith("the run restarts from scratch")
    assert (plan.run_dir / "checkpoint.pt.damaged-1").read_bytes() == bad
    assert not (plan.run_dir / "failed.json").exists()
    assert_same_result(plan.run_dir, reference, ref_weights)


def test_both_checkpoints_damaged_restart_from_scratch_and_nothing_is_overwritten(workdirs, tmp_path, monkeypatch,
                                                                                    capsys):
    reference, ref_weights = reference_run(DIGITS_CE)
    plan = interrupted_run(DIGITS_CE, tmp_path / "again", monkeypatch, 2)
    ckpt, prev = plan.run_dir / "checkpoint.pt", plan.run_dir / PREVIOUS_FILE
    earlier = plan.run_dir / "checkpoint.pt.damaged-1"
    earlier.write_bytes(b"set aside by an earlier resume")
    bad_ckpt, bad_prev = _truncate(ckpt), _truncate(prev, 0.2)
    capsys.readouterr()

    assert run_planned(plan) == "done"
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "checkpoint" in ln]
    assert str(ckpt) in line and "set aside as checkpoint.pt.damaged-2" in line
    assert f"{PREVIOUS_FILE}: unreadable, damaged or truncated" in line and f"set aside as {PREVIOUS_FILE}.damaged-1" in line
    assert line.endswith("the run restarts from scratch")
    assert earlier.read_bytes() == b"set aside by an earlier resume"
    assert (plan.run_dir / "checkpoint.pt.damaged-2").read_bytes() == bad_ckpt
    assert (plan.run_dir / f"{PREVIOUS_FILE}.damaged-1").read_bytes() == bad_prev
    assert_same_result(plan.run_dir, reference, ref_weights)


def test_missing_checkpoint_with_a_previous_one_resumes_from_it(workdirs, tmp_path, monkeypatch, capsys):
    """Killed between the two renames of a checkpoint write: only checkpoint.prev.pt is there."""
    reference, ref_weights = reference_run(DIGITS_CE)
    plan = interrupted_run(DIGITS_CE, tmp_path / "again", monkeypatch, 2)
    (plan.run_dir / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert run_planned(plan) == "done"
    assert f"resuming from {PREVIOUS_FILE} (phase train, epoch 0)" in capsys.readouterr().err
    assert_same_result(plan.run_dir, reference, ref_weights)


def test_damaged_checkpoint_through_the_cli_never_becomes_a_failed_run(workdirs, tmp_path, monkeypatch, capsys):
    plan = interrupted_run(DIGITS_CE, tmp_path / "again", monkeypatch, 1)
    _truncate(plan.run_dir / "checkpoint.pt")
    assert cli("digits", *DIGITS_CE) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(plan.run_dir / "checkpoint.pt") in err
    assert (plan.run_dir / "result.json").exists() and not (plan.run_dir / "failed.json").exists()
    assert cli("digits", *DIGITS_CE) == 0  # the next invocation: done, nothing to retry


def test_curvenet_resumes_from_a_previous_checkpoint_of_its_probe(workdirs, tmp_path, monkeypatch, capsys):
    """Killed inside the allocating stage's epoch 1 with checkpoint.pt (its epoch 0) damaged: the
    previous checkpoint is the probe's last, and the run resumes from it to the same result."""
    from curvebench.engine.loop import Trainer
    from tests.test_curvenet import CELL, TINY_PROBE, TINY_RUN, _plan

    overrides = [*TINY_PROBE, *TINY_RUN]
    reference, ref_model = reference_run(["method=curvenet", *CELL, *overrides])

    monkeypatch.setenv("CURVEBENCH_SPLITS", str(tmp_path / "splits2"))  # so that this run probes too
    monkeypatch.setenv("CURVEBENCH_RESULTS", str(tmp_path / "again"))
    plan2 = _plan("curvenet", *overrides)
    epoch = Trainer._epoch

    def killed_in_allocate_epoch_1(self, phase, e):
        out = epoch(self, phase, e)
        if phase.name == "allocate" and e == 1:  # trained, not yet checkpointed
            raise Interrupted("killed")
        return out

    monkeypatch.setattr(Trainer, "_epoch", killed_in_allocate_epoch_1)
    with pytest.raises(Interrupted):
        run_planned(plan2)
    monkeypatch.setattr(Trainer, "_epoch", epoch)
    ckpt = plan2.run_dir / "checkpoint.pt"
    assert torch.load(plan2.run_dir / PREVIOUS_FILE, weights_only=True)["phase"] == "probe_cyclic"
    _truncate(ckpt)
    capsys.readouterr()

    assert run_planned(plan2) == "done"
    assert f"resuming from {PREVIOUS_FILE} (phase probe_cyclic, epoch 1)" in capsys.readouterr().err
    assert_same_result(plan2.run_dir, reference, ref_model)


# ================================================================================================
# result.json, failed.json, claim.json and split manifests
# ================================================================================================
ONE_RUN = ["method=ce", "seed=1", "split.imbalance_factor=1", "split.noise_rate=0.0", "recipe.epochs=1",
           "train.limit_batches=1"]


def _plan():
    (plan,) = plan_suite("digits", ONE_RUN)
    return plan


# -- result.json ----------------------------------------------------------------------------------
def test_a_truncated_result_is_reported_kept_aside_and_retrained(workdirs, capsys):
    assert cli("digits", *ONE_RUN) == 0
    result = _plan().run_dir / "result.json"
    good = json.loads(result.read_text())
    damaged = result.read_text()[:200]
    result.write_text(damaged)

    assert workers.live_status(result.parent) == "corrupt"
    assert cli("status", "digits", *ONE_RUN) == 0
    assert "1 corrupt" in capsys.readouterr().out
    assert cli("digits", *ONE_RUN, "--dry-run") == 0
    assert "corrupt" in capsys.readouterr().out

    assert cli("digits", *ONE_RUN) == 0
    err = capsys.readouterr().err
    assert str(result) in err and "result.corrupt-1.json" in err
    assert (result.parent / "result.corrupt-1.json").read_text() == damaged  # kept, not overwritten
    again = json.loads(result.read_text())
    assert again["metrics"]["top1_per_epoch"] == good["metrics"]["top1_per_epoch"]
    assert workers.live_status(result.parent) == "done"


def test_a_result_that_breaks_the_schema_is_not_done(workdirs):
    assert cli("digits", *ONE_RUN) == 0
    result = _plan().run_dir / "result.json"
    record = json.loads(result.read_text())
    del record["metrics"]
    result.write_text(json.dumps(record))
    assert workers.live_status(result.parent) == "corrupt"
    assert cli("digits", *ONE_RUN) == 0
    assert workers.live_status(result.parent) == "done"
    assert (result.parent / "result.corrupt-1.json").exists()


def test_leaderboard_exits_non_zero_on_an_unreadable_record_unless_told(workdirs, tmp_path, capsys):
    assert cli("digits", *ONE_RUN) == 0
    result = _plan().run_dir / "result.json"
    result.write_text(result.read_text()[:100])
    out = tmp_path / "lb" / "LB.md"
    assert cli("leaderboard", str(workdirs["results"]), "-o", str(out), "--no-figures") == 1
    err = capsys.readouterr().err
    assert "result.json" in err and "--allow-unreadable" in err
    assert cli("leaderboard", str(workdirs["results"]), "-o", str(out), "--no-figures", "--allow-unreadable") == 0


# -- claim.json -----------------------------------------------------------------------------------
def test_an_empty_or_unparsable_claim_is_stale_at_once(tmp_path):
    for content in ("", "{not json", "[1, 2]"):
        run = tmp_path / f"run-{len(content)}"
        run.mkdir()
        (run / CLAIM_FILE).write_text(content)
        info = read_claim(run)
        assert info is not None and not info.alive, content
        assert workers.live_status(run) != "running"
        claim = try_claim(run)  # no wait for the stale limit
        assert claim is not None
        assert json.loads((run / CLAIM_FILE).read_text())["token"] == claim.token
        claim.release()


def test_a_new_claim_is_never_seen_half_written(tmp_path, monkeypatch):
    """try_claim links a complete file into place, so readers never see an empty claim."""
    import os

    seen = []
    real_link = os.link

    def spy(src, dst, *a, **kw):
        seen.append(json.loads(open(src).read())["token"])  # complete before it becomes the claim
        return real_link(src, dst, *a, **kw)

    monkeypatch.setattr(os, "link", spy)
    claim = try_claim(tmp_path / "run")
    assert claim is not None and seen == [claim.token]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CLAIM_FILE]  # no temporary left
    claim.release()


# -- split manifests ------------------------------------------------------------------------------
def test_splits_check_recomputes_manifest_statistics(workdirs, capsys):
    noisy = ["method=ce", "seed=1", "split.imbalance_factor=10", "split.noise_rate=0.4"]
    assert cli("splits", "digits", *noisy) == 0
    (manifest,) = (workdirs["splits"] / "digits").glob("*.json")
    data = json.loads(manifest.read_text())
    true_rate = data["noise"]["realised_rate"]
    data["noise"]["realised_rate"] = 0.01
    data["counts"]["train_clean"][0] += 5
    manifest.write_text(json.dumps(data))
    capsys.readouterr()
    assert cli("splits", "digits", *noisy, "--check") == 1
    out = capsys.readouterr().out
    assert "DAMAGED manifest" in out and "noise.realised_rate" in out and "counts.train_clean" in out
    assert "0.0100" not in out and f"{true_rate:.4f}" in out  # the recomputed value is shown
