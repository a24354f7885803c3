"""Where data, splits and results live. Environment variables override the defaults."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """Raw datasets: ``$CURVEBENCH_DATA`` or ``./data``."""
    return Path(os.environ.get("CURVEBENCH_DATA", "data"))


def results_root() -> Path:
    """Run directories and result files: ``$CURVEBENCH_RESULTS`` or ``./results``."""
    return Path(os.environ.get("CURVEBENCH_RESULTS", "results"))
