"""Shared fixtures. Torch runs single-threaded: two threads on a busy 2-core machine can be 40x slower."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def workdirs(tmp_path, monkeypatch):
    """Fresh data/splits/results roots for one test (through the environment, as users set them)."""
    dirs = {name: tmp_path / name for name in ("data", "splits", "results")}
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(f"CURVEBENCH_{name.upper()}", str(path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return dirs
