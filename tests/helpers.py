"""Test helpers: run the CLI in-process, read run records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curvenet.cli import main


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
