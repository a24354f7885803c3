"""A run's directory: the names of the files a run keeps there, and what its records say.

The one home of these names. They are part of the published layout (``leaderboard/runs/...``,
``curvebench verify``, ``curvebench compare``): never rename one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curvebench.engine.records import record_state

RESULT_FILE = "result.json"  # a finished run's record (status "done")
FAILED_FILE = "failed.json"  # a failure of training itself (status "failed")
CONFIG_FILE = "config.yaml"  # the resolved config, written when training starts
CHECKPOINT_FILE = "checkpoint.pt"  # the last epoch's state, while training
PREVIOUS_FILE = "checkpoint.prev.pt"  # the checkpoint before the last one, kept until the next is complete
MODEL_FILE = "model.pt"  # final weights of the evaluated networks
HISTORY_FILE = "history.json"  # per-epoch history
ARTIFACTS_FILE = "artifacts.npz"  # a method's arrays for figures (with the split's labels)
CLAIM_FILE = "claim.json"  # the worker that trains the run now (curvebench.workers)
SLURM_JOB_FILE = "slurm_job.json"  # the SLURM job submitted for the run (curvebench.slurm)
RECORD_FILES = (RESULT_FILE, FAILED_FILE)


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory (``path``), and its status."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def result(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def failed(self) -> Path:
        return self.path / FAILED_FILE

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def previous_checkpoint(self) -> Path:
        return self.path / PREVIOUS_FILE

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def history(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def artifacts(self) -> Path:
        return self.path / ARTIFACTS_FILE

    @property
    def claim(self) -> Path:
        return self.path / CLAIM_FILE

    @property
    def slurm_job(self) -> Path:
        return self.path / SLURM_JOB_FILE

    @property
    def started(self) -> bool:
        """Training began here (a config or a checkpoint is on disk)."""
        return self.checkpoint.exists() or self.config.exists()

    @property
    def status(self) -> str:
        """done | failed (training failed) | corrupt (a record that cannot be trusted) | retry (an
        earlier failure outside training) | none: what the run's records say, validated."""
        result = record_state(self.result)
        if result == "valid":
            return "done"
        if result == "corrupt":
            return "corrupt"
        failed = record_state(self.failed)
        return {"valid": "failed", "corrupt": "corrupt", "setup": "retry"}.get(failed, "none")
