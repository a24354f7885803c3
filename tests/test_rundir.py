"""RunDir: the file names of a run directory (the published layout) and the status its records give."""

from __future__ import annotations

import json
from pathlib import Path

from curvebench.engine.rundir import RunDir

RECORD = next((Path(__file__).parents[1] / "leaderboard" / "runs" / "digits").rglob("result.json"))


def test_file_names_are_the_published_layout(tmp_path):
    d = RunDir(str(tmp_path))
    assert d.path == tmp_path
    names = {"result": "result.json", "failed": "failed.json", "config": "config.yaml",
             "checkpoint": "checkpoint.pt", "previous_checkpoint": "checkpoint.prev.pt", "model": "model.pt",
             "history": "history.json", "artifacts": "artifacts.npz", "claim": "claim.json",
             "slurm_job": "slurm_job.json"}
    assert {key: getattr(d, key) for key in names} == {key: tmp_path / name for key, name in names.items()}


def _failed(cause: str) -> str:
    record = json.loads(RECORD.read_text())
    del record["metrics"]
    record.update(status="failed", failure={"phase": "train", "epoch": 3, "cause": cause})
    return json.dumps(record)


def test_status_follows_the_validated_records(tmp_path):
    d = RunDir(tmp_path)
    assert d.status == "none" and not d.started
    d.config.write_text("method: {name: ce}\n")
    assert d.status == "none" and d.started
    d.failed.write_text(_failed("DataError: no data"))  # a failure outside training: tried again
    assert d.status == "retry"
    d.failed.write_text(_failed("non-finite training loss (nan) in phase 'train', epoch 3"))
    assert d.status == "failed"
    d.failed.write_text("{")
    assert d.status == "corrupt"
    d.result.write_text(RECORD.read_text())
    assert d.status == "done"  # a valid result wins over anything failed.json says
    d.result.write_text(RECORD.read_text()[:100])
    assert d.status == "corrupt"
