"""``curvebench verify``: re-trains recorded runs here; bit-identical on one machine, doctored records are caught."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from curvebench.cli import main
from curvebench.engine.records import read_record, validate_record
from curvebench.engine.rundir import RESULT_FILE
from curvebench.verify import CONFIDENCE, sample_paths, tolerance_for
from tests.helpers import cli

DIGITS = ["method=ce", "seed=1,2,3", "split.imbalance_factor=1", "split.noise_rate=0.0", "recipe.epochs=6"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Three finished digits runs (one cell, three seeds), trained once for the module."""
    root = tmp_path_factory.mktemp("recorded")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("data", "splits", "results"):
            mp.setenv(f"CURVEBENCH_{name.upper()}", str(root / name))
        mp.setenv("TQDM_DISABLE", "1")
        assert cli("digits", *DIGITS) == 0
    return root / "results"


def _copy(recorded: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "results"
    shutil.copytree(recorded, dst)
    return dst


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _doctor(results: Path, seed: int, edit) -> Path:
    (path,) = [p for p in results.rglob(RESULT_FILE) if p.parent.name == f"seed-{seed}"]
    record = json.loads(path.read_text())
    edit(record)
    validate_record(record)
    path.write_text(json.dumps(record))
    return path


def _verify(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["verify", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_rerun_here_is_bit_identical_and_results_dir_is_untouched(recorded, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CURVEBENCH_RESULTS", str(tmp_path / "elsewhere"))  # never written either
    before = _tree(recorded)
    code, out, err = _verify(capsys, str(recorded), "--workdir", str(tmp_path / "work"))
    assert code == 0, out + err
    assert "every finished run" in out and "result: 3 bit-identical" in out
    assert "outside" not in out.split("result:")[1]
    assert _tree(recorded) == before
    assert not (tmp_path / "elsewhere").exists()
    # the record of the re-run: same split, same config hash, and it names the hardware
    (rerun,) = [read_record(p) for p in (tmp_path / "work" / "run-1").rglob(RESULT_FILE)]
    (orig,) = [read_record(p) for p in recorded.rglob(RESULT_FILE) if p.parent.name == "seed-1"]
    assert (rerun["split_sha256"], rerun["config_hash"]) == (orig["split_sha256"], orig["config_hash"])
    rows = [line for line in out.splitlines() if line[:1].isdigit()]
    assert len(rows) == 3 and all("bit-identical" in line and line.rstrip().endswith("same") for line in rows)
    assert "here:        cpu · " in out and rerun["env"]["cpu_isa"] in out


def test_doctored_metric_is_outside_the_spread(recorded, tmp_path, capsys):
    results = _copy(recorded, tmp_path)

    others = [read_record(p)["metrics"]["top1_last"] for p in results.rglob(RESULT_FILE) if p.parent.name != "seed-1"]
    tol = tolerance_for({"metrics": {}}, others)
    assert tol < 80  # the other two seeds agree well enough for a shift of 80 points to stand out

    def shifted(record):  # about 95% -> 15%: more than the others' spread allows
        m = record["metrics"]
        assert m["top1_last"] > 80
        m["top1_per_epoch"][-1] = m["top1_last"] = round(m["top1_last"] - 80, 2)

    _doctor(results, 1, shifted)
    code, out, _ = _verify(capsys, str(results))
    assert code == 1
    assert "outside spread" in out and "result: 2 bit-identical, 1 outside spread" in out  # the others reproduce


def test_small_difference_is_within_the_spread(recorded, tmp_path, capsys):
    results = _copy(recorded, tmp_path)

    def earlier_epoch(record):  # not bit-identical, same last epoch
        record["metrics"]["top1_per_epoch"][0] = round(record["metrics"]["top1_per_epoch"][0] + 0.2, 2)

    _doctor(results, 2, earlier_epoch)
    code, out, _ = _verify(capsys, str(results))
    assert code == 0 and "within spread" in out and "result: 2 bit-identical, 1 within spread" in out
    assert " 0/6 " in out  # the first epoch already differs


def test_a_cell_of_two_seeds_has_no_spread(recorded, tmp_path, capsys):
    results = _copy(recorded, tmp_path)
    (seed3,) = [p.parent for p in results.rglob(RESULT_FILE) if p.parent.name == "seed-3"]
    shutil.rmtree(seed3)

    def moved(record):  # two test images off
        m = record["metrics"]
        m["top1_per_epoch"][-1] = m["top1_last"] = round(m["top1_last"] + (0.4 if m["top1_last"] < 99 else -0.4), 2)

    _doctor(results, 1, moved)
    code, out, _ = _verify(capsys, str(results))
    assert code == 1 and "outside spread: a cell of 2 seed(s) has no spread" in out and "0.20 (2 seeds)" in out


def test_split_hash_is_checked(recorded, tmp_path, capsys):
    results = _copy(recorded, tmp_path)
    _doctor(results, 1, lambda r: r.update(split_sha256="0" * 64))
    code, out, _ = _verify(capsys, str(results), "--sample", "3")
    assert code == 1 and "split differs" in out and "result: 2 bit-identical, 1 split differs" in out


def test_sample_is_deterministic_and_spread():
    paths = [f"d/cell-{c}/m-{m}/h/seed-{s}/result.json" for c in range(4) for m in range(13) for s in (1, 2, 3)]
    picked = sample_paths(paths, 6)
    assert picked == sample_paths(list(reversed(paths)), 6) == sorted(picked) and len(set(picked)) == 6
    assert len({p.split("/")[2] for p in picked}) > 3  # not one method: no aliasing with the grid's layout
    assert sample_paths(paths, 500) == sorted(paths)
    assert set(sample_paths(paths, 6)) <= set(sample_paths(paths + ["z/new/result.json"], 7))


def test_tolerance_is_a_95_percent_bound_with_a_floor_of_one_test_image():
    from scipy.stats import t

    record = {"metrics": {"confusion_last": [[250, 0], [0, 250]]}}  # 500 test images: 0.2 points each
    others = [90.0, 91.0, 92.0]  # the cell's other seeds (std 1)
    assert CONFIDENCE == 0.95
    assert tolerance_for(record, others) == pytest.approx(t.ppf(0.975, 2) * math.sqrt(2) * 1.0)
    assert tolerance_for(record, [90.0, 90.4]) == pytest.approx(12.706 * 0.4, rel=1e-4)  # 3 seeds: 12.7 × |a − b|
    assert tolerance_for(record, [90.0, 90.0]) == pytest.approx(12.706 * 0.2, rel=1e-4)  # tied: one image apart
    assert tolerance_for(record, [90.0, 90.0, 90.0]) == pytest.approx(t.ppf(0.975, 2) * 0.2)
    assert tolerance_for(record, [90.0]) == pytest.approx(0.2)  # a cell of 2 seeds: no spread


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: d, "no finished run records"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    code, out, err = _verify(capsys, str(make(tmp_path)))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_workdir_inside_results_is_refused(recorded, tmp_path, capsys):
    import torch

    results = _copy(recorded, tmp_path)
    code, _, err = _verify(capsys, str(results), "--workdir", str(results / "scratch"))
    assert code == 2 and "must lie outside" in err and not (results / "scratch").exists()
    code, _, err = _verify(capsys, str(results), "--sample", "0")
    assert code == 2 and "--sample must be >= 1" in err
    if not torch.cuda.is_available():
        code, _, err = _verify(capsys, str(results), "--device", "cuda")
        assert code == 2 and "CUDA is not available" in err and len(err.strip().splitlines()) == 1


def test_smoke_run_regenerates_its_data_in_scratch(workdirs, capsys):
    assert cli("smoke", "method=ce") == 0
    capsys.readouterr()
    code, out, _ = _verify(capsys, str(workdirs["results"]))
    assert code == 0 and "result: 1 bit-identical" in out and "(1 seed)" in out
    assert not list(workdirs["data"].iterdir())  # the data root is never written either
