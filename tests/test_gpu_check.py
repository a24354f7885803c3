"""``scripts/gpu-check.sh`` (``curvebench perf --gpu-check``): the reduced CPU size writes every
section as JSON and markdown; a column that cannot run here says why; targets are figures (the exit
status is 0 unless a section crashed). Nothing here asserts a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from curvebench.perf import gpu_check
from curvebench.perf.gpu_check import NA, NOT_AVAILABLE, REDUCED, SECTIONS, mode_overrides, targets

ROOT = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
HEADINGS = ("## Targets", "## Smoke suite", "## CE epoch", "## Meta / CE step time", "## Concurrent runs",
            "## Extrapolated runs")


@pytest.mark.slow
def test_gpu_check_script_on_the_cpu_writes_every_section(workdirs, tmp_path):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "gpu-check.json").read_text())
    text = (out / "gpu-check.md").read_text()
    for heading in HEADINGS:
        assert heading in text, heading
    assert data["size"] == "reduced" and data["errors"] == {}
    for name in SECTIONS:
        assert isinstance(data[name], dict), (name, data[name])
    smoke = data["smoke"]["methods"]
    assert set(smoke) == set(REDUCED.smoke_methods) and all(r["status"] == "done" for r in smoke.values())
    assert data["ce_epoch"]["eager"]["epoch_s"] > 0 and data["ce_epoch"]["compiled"]["epoch_s"] > 0
    assert data["ce_epoch"]["graphed"] == NA  # CUDA graphs need CUDA
    for sl in (0, 3):
        assert data["meta_ce"]["eager"][f"SL{sl}"]["ratio_to_ce_same_mode"] > 1
        assert data["meta_ce"]["graphed"][f"SL{sl}"] == NA
        compiled = data["meta_ce"]["compiled"][f"SL{sl}"]  # train.compile_meta
        assert compiled["ratio_to_ce_same_mode"] > 1, compiled
    assert [int(n) for n in data["concurrent"]["processes"]] == list(REDUCED.concurrent)
    assert all(r["aggregate_images_per_second"] > 0 for r in data["concurrent"]["processes"].values())
    runs = data["extrapolated"]["runs"]
    assert set(runs) == set(REDUCED.extrapolate_methods) and all(r["run_hours"] > 0 for r in runs.values())
    assert data["extrapolated"]["table1_hours_serial"] == pytest.approx(sum(r["table1_hours"] for r in runs.values()))
    names = [t["name"] for t in data["targets"]]
    assert names[0].startswith("CE epoch") and names[-1].startswith("Table 1") and len(names) == 8
    assert all(t["ok"] is None for t in data["targets"])  # GPU targets: information on a CPU
    assert "target CE epoch, CUDA graphs (s): n/a" in proc.stdout


def test_each_mode_has_its_overrides_and_a_missing_device_degrades_to_a_reason():
    assert mode_overrides("eager", True, CPU, REDUCED) == ()
    assert mode_overrides("compiled", False, CPU, REDUCED) == ("train.compile=true", "train.compile_backend=eager")
    assert mode_overrides("compiled", True, CPU, REDUCED) == (
        "train.compile=true", "train.compile_meta=true", "train.compile_backend=eager")
    assert mode_overrides("graphed", False, CPU, REDUCED) == NA
    assert mode_overrides("graphed", True, CUDA, gpu_check.FULL) == ("train.cuda_graphs=true", "train.compile_meta=true")


def test_targets_pass_or_fail_on_a_gpu_and_inform_on_a_cpu():
    out = {"ce_epoch": {"graphed": {"epoch_s": 0.7}},
           "meta_ce": {"eager": {"SL0": {"ratio_to_ce_same_mode": 13.0}, "SL3": {"ratio_to_ce_same_mode": 2.9}},
                       "compiled": {"SL0": "not available (x)", "SL3": "not available (x)"},
                       "graphed": {"SL0": {"ratio_to_ce_same_mode": 4.0}, "SL3": {"ratio_to_ce_same_mode": 3.5}}},
           "concurrent": {"processes": {"1": {"speedup": 1.0}, "2": {"speedup": 1.8}, "4": {"speedup": 2.5}}},
           "extrapolated": {"table1_hours_serial": 20.0}}
    gpu = {t["name"]: t for t in targets(out, CUDA)}
    assert gpu["CE epoch, CUDA graphs (s)"]["ok"] is True
    assert gpu["meta / CE at SL 0, eager"]["ok"] is False and gpu["meta / CE at SL 3, eager"]["ok"] is True
    assert gpu["meta / CE at SL 0, compiled"]["ok"] is None and gpu["meta / CE at SL 0, graphed"]["ok"] is True
    assert gpu["meta / CE at SL 3, graphed"]["ok"] is False
    (t1,) = [t for name, t in gpu.items() if name.startswith("Table 1")]
    assert t1["value"] == pytest.approx(8.0) and t1["ok"] is True and "4 concurrent" in t1["name"]
    assert all(t["ok"] is None for t in targets(out, CPU))


def test_a_crashed_section_is_reported_and_fails_the_exit_status(tmp_path, monkeypatch):
    def broken(device, size, log):
        raise RuntimeError("the device fell over")

    monkeypatch.setattr(gpu_check, "concurrent_section", broken)
    env = {"command": "test", "date": "today", "torch": torch.__version__, "cpu": "cpu"}
    assert gpu_check.run(CPU, tmp_path, env, lambda s: None, sections=["concurrent"]) == 1
    data = json.loads((tmp_path / "gpu-check.json").read_text())
    assert "the device fell over" in data["errors"]["concurrent"] and data["concurrent"].startswith("crashed")
    assert data["smoke"].startswith("skipped")
    assert len(data["targets"]) == 8 and all(t["value"] == NOT_AVAILABLE for t in data["targets"])
    text = (tmp_path / "gpu-check.md").read_text()
    assert "## Errors" in text and "the device fell over" in text
    for heading in HEADINGS:
        assert heading in text, heading
