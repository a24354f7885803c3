"""Damaged files in a results tree: reported by path, set aside (never deleted or overwritten), and the
run continues from the last good state instead of failing for good."""

from __future__ import annotations

import pytest
import torch

from curvenet.engine.checkpoint import PREVIOUS_FILE
from curvenet.engine.loop import Interrupted
from curvenet.engine.records import read_record
from curvenet.run import run_planned
from curvenet.suites import plan_suite
from tests.helpers import cli
from tests.test_engine import DIGITS_CE, _weights  # the resume tests' 3-epoch CE run


# ================================================================================================
# checkpoint.pt: damaged (truncated, emptied, garbage) -> set aside; resume from checkpoint.prev.pt
# or from scratch, saying which; never failed.json
# ================================================================================================
def _reference(workdirs):
    (plan,) = plan_suite("digits", DIGITS_CE)
    assert run_planned(plan) == "done"
    return read_record(plan.run_dir / "result.json"), _weights(plan.run_dir)


def _interrupted(tmp_path, monkeypatch, epochs: int):
    """A fresh results root with the same run killed after ``epochs`` epochs."""
    monkeypatch.setenv("CURVEBENCH_RESULTS", str(tmp_path / "again"))
    (plan,) = plan_suite("digits", DIGITS_CE)
    with pytest.raises(Interrupted):
        run_planned(plan, interrupt_after=epochs)
    return plan


def _truncate(path, keep: float = 0.5) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path.read_bytes()


def _same_result(run_dir, reference, ref_weights) -> None:
    again = read_record(run_dir / "result.json")
    assert again["metrics"]["top1_per_epoch"] == reference["metrics"]["top1_per_epoch"]
    assert [p["loss_per_epoch"] for p in again["phases"]] == [p["loss_per_epoch"] for p in reference["phases"]]
    for key, value in ref_weights.items():
        assert torch.equal(value, _weights(run_dir)[key]), key


def test_the_previous_checkpoint_is_kept_until_the_next_is_complete(workdirs, tmp_path, monkeypatch):
    plan = _interrupted(tmp_path, monkeypatch, 2)
    ckpt, prev = plan.run_dir / "checkpoint.pt", plan.run_dir / PREVIOUS_FILE
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert torch.load(prev, weights_only=True)["epoch"] == 0
    assert run_planned(plan) == "done"
    assert not ckpt.exists() and not prev.exists()  # the result replaces both


def test_truncated_checkpoint_resumes_from_the_previous_one_bit_identically(workdirs, tmp_path, monkeypatch,
                                                                             capsys):
    reference, ref_weights = _reference(workdirs)
    plan = _interrupted(tmp_path, monkeypatch, 2)  # checkpoint.pt: epoch 1, checkpoint.prev.pt: epoch 0
    ckpt = plan.run_dir / "checkpoint.pt"
    damaged = _truncate(ckpt)
    capsys.readouterr()

    assert run_planned(plan) == "done"
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "checkpoint" in ln]
    assert str(ckpt) in line and "damaged" in line and "set aside as checkpoint.pt.damaged-1" in line
    assert line.endswith(f"resuming from {PREVIOUS_FILE} (phase train, epoch 0)")
    assert (plan.run_dir / "checkpoint.pt.damaged-1").read_bytes() == damaged  # kept as it was
    assert not (plan.run_dir / "failed.json").exists()
    _same_result(plan.run_dir, reference, ref_weights)


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_only_checkpoint_restarts_from_scratch(workdirs, tmp_path, monkeypatch, capsys, damage):
    reference, ref_weights = _reference(workdirs)
    plan = _interrupted(tmp_path, monkeypatch, 1)  # one checkpoint, no previous one
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
    _same_result(plan.run_dir, reference, ref_weights)


def test_both_checkpoints_damaged_restart_from_scratch_and_nothing_is_overwritten(workdirs, tmp_path, monkeypatch,
                                                                                    capsys):
    reference, ref_weights = _reference(workdirs)
    plan = _interrupted(tmp_path, monkeypatch, 2)
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
    _same_result(plan.run_dir, reference, ref_weights)


def test_missing_checkpoint_with_a_previous_one_resumes_from_it(workdirs, tmp_path, monkeypatch, capsys):
    """Killed between the two renames of a checkpoint write: only checkpoint.prev.pt is there."""
    reference, ref_weights = _reference(workdirs)
    plan = _interrupted(tmp_path, monkeypatch, 2)
    (plan.run_dir / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert run_planned(plan) == "done"
    assert f"resuming from {PREVIOUS_FILE} (phase train, epoch 0)" in capsys.readouterr().err
    _same_result(plan.run_dir, reference, ref_weights)


def test_damaged_checkpoint_through_the_cli_never_becomes_a_failed_run(workdirs, tmp_path, monkeypatch, capsys):
    plan = _interrupted(tmp_path, monkeypatch, 1)
    _truncate(plan.run_dir / "checkpoint.pt")
    assert cli("digits", *DIGITS_CE) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(plan.run_dir / "checkpoint.pt") in err
    assert (plan.run_dir / "result.json").exists() and not (plan.run_dir / "failed.json").exists()
    assert cli("digits", *DIGITS_CE) == 0  # the next invocation: done, nothing to retry


def test_curvenet_resumes_from_a_previous_checkpoint_of_its_probe(workdirs, tmp_path, monkeypatch, capsys):
    """Killed inside the allocating stage's epoch 1 with checkpoint.pt (its epoch 0) damaged: the
    previous checkpoint is the probe's last, and the run resumes from it to the same result."""
    from curvenet.engine.loop import Trainer
    from tests.test_curvenet import TINY_PROBE, TINY_RUN, _plan

    overrides = [*TINY_PROBE, *TINY_RUN]
    plan = _plan("curvenet", *overrides)
    assert run_planned(plan) == "done"
    reference = read_record(plan.run_dir / "result.json")
    ref_model = torch.load(plan.run_dir / "model.pt")["model"]

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
    resumed = read_record(plan2.run_dir / "result.json")
    assert [p["loss_per_epoch"] for p in resumed["phases"]] == [p["loss_per_epoch"] for p in reference["phases"]]
    assert resumed["metrics"]["top1_per_epoch"] == reference["metrics"]["top1_per_epoch"]
    for key, value in ref_model.items():
        assert torch.equal(value, torch.load(plan2.run_dir / "model.pt")["model"][key]), key
