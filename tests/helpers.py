"""Test helpers: run the CLI in-process, read run records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from curvebench.cli import main


def cli(*args: str) -> int:
    return main([*args, "--no-progress"] if args and args[0] not in ("splits", "status", "list", "leaderboard") else list(args))


def records(results: Path, name: str = "result.json") -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob(name))]


def run_dirs(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.rglob("config.yaml"))


_FIXTURE_RESULTS = Path(__file__).parent / "fixtures" / "leaderboard" / "results"


def valid_record_text(status: str = "done") -> str:
    """A schema-valid record ("done", or "failed" of training itself) from the leaderboard fixtures."""
    name = "result.json" if status == "done" else "failed.json"
    return next(p for p in sorted(_FIXTURE_RESULTS.rglob(name)) if json.loads(p.read_text())["status"] == status
                ).read_text()


# -- resume equivalence: a reference run, the same run killed in another results root -------------
def model_weights(run_dir: Path) -> dict[str, Any]:
    import torch

    return torch.load(run_dir / "model.pt", weights_only=True)["model"]


def reference_run(overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train ``overrides`` (one digits run) to the end; returns (its record, its final weights)."""
    from curvebench.engine.records import read_record
    from curvebench.run import run_planned
    from curvebench.suites import plan_suite

    (plan,) = plan_suite("digits", overrides)
    assert run_planned(plan) == "done"
    return read_record(plan.run_dir / "result.json"), model_weights(plan.run_dir)


def interrupted_run(overrides: list[str], root: Path, monkeypatch: Any, epochs: int | Sequence[int]) -> Any:
    """The same run in a fresh results root ``root``, killed after ``epochs`` epochs (a sequence: killed
    after each count in turn, resuming in between); returns its plan. After each kill the run has a
    checkpoint and no result."""
    import pytest

    from curvebench.engine.loop import Interrupted
    from curvebench.run import run_planned
    from curvebench.suites import plan_suite

    monkeypatch.setenv("CURVEBENCH_RESULTS", str(root))
    (plan,) = plan_suite("digits", overrides)
    for stop in [epochs] if isinstance(epochs, int) else epochs:
        with pytest.raises(Interrupted):
            run_planned(plan, interrupt_after=stop)
        assert (plan.run_dir / "checkpoint.pt").exists() and not (plan.run_dir / "result.json").exists()
    return plan


def resumed_run(overrides: list[str], root: Path, monkeypatch: Any, epochs: int | Sequence[int]) -> Any:
    """``interrupted_run``, then resumed to the end; returns its plan."""
    from curvebench.run import run_planned

    plan = interrupted_run(overrides, root, monkeypatch, epochs)
    assert run_planned(plan) == "done"
    return plan


def assert_same_result(run_dir: Path, reference: dict[str, Any],
                       ref_weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-epoch accuracy and loss, and (when given) every final weight, bit for bit; returns the
    run's record (for the checks a test adds)."""
    import torch

    from curvebench.engine.records import read_record

    again = read_record(run_dir / "result.json")
    assert again["metrics"]["top1_per_epoch"] == reference["metrics"]["top1_per_epoch"]
    assert [p["loss_per_epoch"] for p in again["phases"]] == [p["loss_per_epoch"] for p in reference["phases"]]
    weights = model_weights(run_dir) if ref_weights else {}
    for key, value in (ref_weights or {}).items():
        assert torch.equal(value, weights[key]), key
    return again


# -- finite differences ---------------------------------------------------------------------------
def finite_difference_grad(fn: Callable[[], Any], params: Sequence[Any], eps: float = 1e-6) -> Any:
    """Central differences (fn(p + eps) - fn(p - eps)) / (2 eps) of the scalar ``fn()`` for every entry
    of every tensor in ``params`` (perturbed in place, then restored), flattened in that order like
    ``torch.cat([p.grad.flatten() for p in params])``; float64."""
    import torch

    out = []
    for p in params:
        for i in range(p.numel()):
            p.data.view(-1)[i] += eps
            up = fn().item()
            p.data.view(-1)[i] -= 2 * eps
            down = fn().item()
            p.data.view(-1)[i] += eps
            out.append((up - down) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)
