"""Damaged files in a results or splits tree are never trusted and never a dead end: the file is
named, kept aside, and the run is re-trained (or the check fails)."""

from __future__ import annotations

import json

from curvenet import workers
from curvenet.workers import CLAIM_FILE, read_claim, try_claim
from tests.helpers import cli

ONE_RUN = ["method=ce", "seed=1", "split.imbalance_factor=1", "split.noise_rate=0.0", "recipe.epochs=1",
           "train.limit_batches=1"]


def _plan():
    from curvenet.suites import plan_suite

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
