"""Hardware and math-library stacks: recorded in every run record, compared, and marked in the leaderboard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from curvebench.engine.hardware import parse_torch_config, stack_differences, stack_key, stack_label
from curvebench.engine.records import config_hash, environment, validate_record
from leaderboard.load import load_runs
from leaderboard.report import ReportOptions, build_report
from leaderboard.tables import MIXED_HW, best_text
from tests.test_leaderboard import DIGITS, digits_cell, fx, write_tree

COMMITTED = Path(__file__).resolve().parents[1] / "leaderboard" / "runs"


def _record(seed: int, stack: dict | None = None, **env) -> dict:
    record = fx.make_record(**DIGITS, method="ce", seed=seed, imb=10, p=0.4, stack=stack)
    record["env"].update(env)
    return record


# -- recording -----------------------------------------------------------------------------------
def test_environment_records_isa_cpu_and_math_libraries():
    import torch

    env = environment("cpu")
    assert env["cpu_isa"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads()
    if torch.backends.mkldnn.is_available():
        assert env["onednn"] and env["onednn"][0].isdigit()
    for key in ("arch", "cpu_model", "cpu_amx", "cpu_features", "mkl", "numpy_blas", "isa_env", "gpu_capability"):
        assert key in env
    if Path("/proc/cpuinfo").exists():
        assert isinstance(env["cpu_amx"], bool) and env["cpu_model"]
    record = _record(1)
    record["env"] = {**record["env"], **env}
    validate_record(record)  # the schema knows the fields
    bad = {**record, "env": {**record["env"], "cpu_amx": "yes"}}
    with pytest.raises(ValueError, match="cpu_amx"):
        validate_record(bad)


def test_env_does_not_enter_the_config_hash():
    a, b = _record(1), _record(1, fx.STACK_AVX2)
    assert a["env"] != b["env"] and a["config_hash"] == b["config_hash"] == config_hash(b["config"])


def test_torch_config_parsing():
    new = ("  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64\n"
           "  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)\n")
    assert parse_torch_config(new) == {"mkl": "2024.2 (build 20240605)", "onednn": "3.12.0 (80afa710)"}
    old = ("  - Intel(R) Math Kernel Library Version 2020.0.0 Product Build 20191122 for Intel(R) 64\n"
           "  - Intel(R) MKL-DNN v2.7.3 (Git Hash 6dbeffbae1f23cbbeae17adb7b5b13f1f37c080e)\n")
    assert parse_torch_config(old) == {"mkl": "2020.0.0 (build 20191122)", "onednn": "2.7.3 (6dbeffba)"}
    assert parse_torch_config("PyTorch built with:\n  - GCC 9.3\n") == {"mkl": None, "onednn": None}  # e.g. ARM


def test_stack_keys():
    legacy = dict(fx.CPU_ENV)
    new = {**fx.CPU_ENV, **fx.STACK_AVX512}
    assert stack_key(legacy) == stack_key(dict(legacy)) and stack_key(legacy) != stack_key(new)
    assert "ISA not recorded" in stack_label(legacy) and "AVX512+AMX" in stack_label(new)
    assert stack_label({**new, **fx.STACK_AVX2}) != stack_label(new)
    assert any(d.startswith("cpu_isa AVX512 → AVX2") for d in stack_differences(new, {**new, **fx.STACK_AVX2}))
    gpu = dict(fx.GPU_ENV)
    assert stack_key({**gpu, "device": "cuda:1"}) == stack_key(gpu)  # which GPU of a machine does not matter
    assert stack_key({**gpu, "device_name": "NVIDIA A100-SXM4-40GB"}) != stack_key(gpu)
    assert stack_key({**gpu, "cudnn": 90300}) != stack_key(gpu)
    assert stack_key({**legacy, "cudnn": 90300}) == stack_key(legacy)  # cuDNN does not matter on the CPU
    assert stack_key({**new, "isa_env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}) != stack_key(new)
    assert stack_key({**new, "torch_threads": 4}) != stack_key(new)
    assert stack_key({**new, "hostname": "other"}) == stack_key(new)  # names of machines are not hardware


def test_records_from_before_the_stack_fields_load_as_isa_not_recorded(tmp_path):
    # the committed digits records carry the fields now; one of them with its env as older records had it
    import json
    import shutil

    src = next(COMMITTED.rglob("result.json"))
    record = json.loads(src.read_text())
    old_keys = ("harness_version", "git_sha", "git_dirty", "python", "torch", "numpy", "cuda", "cudnn", "device",
                "device_name", "hostname", "image")
    record["env"] = {**{k: record["env"].get(k) for k in old_keys}, "device_name": "x86_64"}
    dst = tmp_path / src.relative_to(COMMITTED)
    dst.parent.mkdir(parents=True)
    dst.write_text(json.dumps(record))
    runs = load_runs(tmp_path)
    assert not runs.problems and len(runs.frame) == 1
    assert set(runs.frame["hardware"]) == {f"cpu · x86_64 · ISA not recorded · torch {record['env']['torch']}"}
    assert runs.frame["cpu_isa"].isna().all()
    shutil.rmtree(tmp_path / "digits")


def test_committed_records_name_one_stack():
    runs = load_runs(COMMITTED)
    assert not runs.problems and len(runs.frame) == len(list(COMMITTED.rglob("result.json"))) > 0
    assert runs.frame["cpu_isa"].notna().all() and len(set(runs.frame["hardware"])) == 1


# -- leaderboard -----------------------------------------------------------------------------------
def test_one_stack_is_not_marked(tmp_path):
    _, cell, _ = digits_cell(write_tree(tmp_path / "new", [_record(s, fx.STACK_AVX512) for s in (1, 2)]))
    assert not cell.mixed_hardware and MIXED_HW not in best_text(cell)
    _, cell, _ = digits_cell(write_tree(tmp_path / "old", [_record(s) for s in (1, 2)]))
    assert not cell.mixed_hardware and len(cell.stacks) == 1


@pytest.mark.parametrize("second", [
    dict(stack=fx.STACK_AVX2),  # another instruction set
    dict(stack=None),  # a record without the stack fields beside one with them
    dict(stack={**fx.STACK_AVX512, "onednn": "3.7.1 (8d263e69)"}),  # another oneDNN
    dict(stack=fx.STACK_AVX512, torch="2.6.0+cpu"),
])
def test_mixed_stacks_are_marked_and_still_averaged(tmp_path, second):
    extra = {k: v for k, v in second.items() if k != "stack"}
    records = [_record(1, fx.STACK_AVX512), _record(2, fx.STACK_AVX512), _record(3, second["stack"], **extra)]
    _, cell, _ = digits_cell(write_tree(tmp_path, records))
    assert cell.mixed_hardware and len(cell.stacks) == 2 and sorted(cell.stacks.values()) == [(1, 2), (3,)]
    assert cell.flag is None and cell.usable  # marked, not flagged: the mean is kept
    assert cell.last_mean == pytest.approx(sum(r["metrics"]["top1_last"] for r in records) / 3)
    assert best_text(cell).endswith(f" {MIXED_HW}")


def test_mixed_gpus_are_marked(tmp_path):
    c10 = dict(suite="cifar10", dataset="cifar10", model="resnet32", recipe="harmonised", method="curvenet", imb=50,
               p=0.0, noise="flip2")
    a = fx.make_record(**c10, seed=1)
    b = fx.make_record(**c10, seed=2)
    b["env"]["device_name"] = "NVIDIA A100-SXM4-80GB"
    rep = build_report(write_tree(tmp_path / "results", [a, b]), tmp_path / "out" / "LB.md", ReportOptions(figures=False))
    assert f"(n=2) {MIXED_HW}" in rep.markdown
    assert "NVIDIA A100-SXM4-80GB" in rep.markdown and "hardware/software stacks" in rep.markdown
    cells = rep.cells_csv
    assert set(cells.loc[cells["hardware_stacks"] == 2, "row"]) == {"CurveNet (Ours)"}


def test_snapshot_marks_the_fixture_cells_that_mix_stacks():
    md = (fx.EXPECTED / "LEADERBOARD.md").read_text()
    # CE, IF 1, p 0: one record with the stack fields (measured tables pad their cells)
    assert re.search(rf"\| 94\.58 ± 0\.94 \(n=3\) {MIXED_HW} +\|", md)
    assert (f"{MIXED_HW} CurveNet (Ours) · IF 1, p 0: runs from 2 hardware/software stacks (all cpu · torch 2.5.1+cpu"
            in md)
    assert "Fixture CPU 7000 · AVX2 (seed 3); Fixture CPU 9000 · AVX512+AMX (seeds 1, 2)" in md
    assert f"{MIXED_HW} 2 cell(s) mix stacks" in md
    runs = (fx.EXPECTED / "runs.csv").read_text().splitlines()[0].split(",")
    assert {"cpu_isa", "cpu_model", "mkl", "onednn", "hardware"} <= set(runs)
