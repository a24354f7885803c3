"""Leaderboard: snapshot of the committed fixture tree, and the trust rules (flags, MA, failures, bad files)."""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from pathlib import Path

import pytest

from leaderboard.aggregate import build_table
from leaderboard.load import load_runs
from leaderboard.report import CELLS_CSV, RUNS_CSV, ReportOptions, build_report
from leaderboard.spec import load_specs
from leaderboard.tables import best_text, ma_best_text

FIXTURES = Path(__file__).parent / "fixtures" / "leaderboard"
_spec = importlib.util.spec_from_file_location("lb_fixtures", FIXTURES / "make_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)  # type: ignore[union-attr]

DIGITS = dict(suite="digits", dataset="digits", model="digits_cnn", recipe="digits")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("lb") / "LEADERBOARD.md"
    return build_report(fx.RESULTS, out, ReportOptions(**fx.SNAPSHOT_OPTIONS, figures=True)), out.parent


def write_tree(root: Path, records: list[dict]) -> Path:
    for record in records:
        name = "result.json" if record["status"] == "done" else "failed.json"
        path = root / fx.run_path(record, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    return root


def digits_cell(runs_root: Path, method: str = "ce"):
    """The digits table's cell (method, IF 10, p 0.4) built from ``runs_root``."""
    specs = load_specs()
    table = build_table(specs.table("digits"), specs, load_runs(runs_root))
    ri = [r.match for r in table.rows].index({"method": method})
    return table, table.blocks[0].cells[(ri, 3)], table.blocks[0].ma[ri]


# -- snapshot ------------------------------------------------------------------------------------
def test_fixture_tree_is_what_the_script_writes(tmp_path):
    fx.write_fixtures(tmp_path, validate=False)  # the loader validates the committed files (snapshot test)
    committed = sorted(p.relative_to(fx.RESULTS) for p in fx.RESULTS.rglob("*.json"))
    assert committed == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    for rel in committed:
        assert (tmp_path / rel).read_text() == (fx.RESULTS / rel).read_text(), rel


@pytest.mark.parametrize("name", ["LEADERBOARD.md", RUNS_CSV, CELLS_CSV])
def test_snapshot(report, name):
    _, out = report
    got, want = (out / name).read_text(), (fx.EXPECTED / name).read_text()
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "expected", "generated", n=1))
        pytest.fail(f"{name} differs from the snapshot; if intended, run "
                    f"`PYTHONPATH=$PWD python tests/fixtures/leaderboard/make_fixtures.py --snapshot`:\n{diff[:4000]}")


def test_snapshot_has_every_table_with_paper_numbers(report):
    md = report[0].markdown
    for title in ("## Table 1:", "## Table 2:", "## Table 3:", "## Table 4:", "## Table 5:", "## Table 6:",
                  "## Table 7:", "## Table 8:", "## Table 9:", "## Table 10:", "## Digits:"):
        assert title in md
    assert re.search(r"\| Bootstrapping +\| reported only +\| 68\.94 ", md)
    assert "68.94 for CE Loss, Bootstrapping and S-adaptation" in md  # the Table 4 footnote
    assert "(suite `table7` not defined in this checkout yet)" not in md  # table7 has a fixture run
    assert "none yet (suite `table6` not defined in this checkout yet)" in md
    assert "Regenerate with `curvebench leaderboard tests/fixtures/leaderboard/results" in md


# -- trust rules -------------------------------------------------------------------------------
def test_hash_disagreement_is_flagged_and_left_out(report):
    rep, _ = report
    digits = next(t for t in rep.tables if t.spec.id == "digits")
    rows = [r.label for r in digits.rows]
    block = digits.blocks[0]
    cb, focal = block.cells[(rows.index("Class-Balanced"), 0)], block.cells[(rows.index("Focal"), 3)]
    assert cb.flag == "2 split hashes" and focal.flag == "2 config hashes"
    for cell in (cb, focal):
        assert cell.best_mean is None and cell.last_mean is None and not cell.usable
        assert best_text(cell).startswith("⚠ flagged")
    assert block.ma[rows.index("Focal")].best is None  # a flagged cell counts as missing
    assert "1 flagged" in ma_best_text(block.ma[rows.index("Focal")])
    cells = rep.cells_csv
    assert set(cells.loc[cells["status"] == "flagged", "row"]) == {"Class-Balanced", "Focal"}
    assert "digits" in set(rep.runs_csv.loc[rep.runs_csv["method"] == "cb", "flagged_in"])


def test_flag_excludes_only_the_odd_run_out(tmp_path):
    same = [fx.make_record(**DIGITS, method="ce", seed=s, imb=10, p=0.4) for s in (1, 2)]
    _, cell, _ = digits_cell(write_tree(tmp_path / "a", same))
    assert cell.flag is None and cell.n_done == 2
    assert cell.best_mean == pytest.approx(sum(r["metrics"]["top1_best"] for r in same) / 2)
    odd = fx.make_record(**DIGITS, method="ce", seed=3, imb=10, p=0.4, split_salt="regenerated")
    _, cell, ma = digits_cell(write_tree(tmp_path / "b", same + [odd]))
    assert cell.flag == "2 split hashes" and cell.best_mean is None


def test_ma_needs_every_cell(report):
    rep, _ = report
    digits = next(t for t in rep.tables if t.spec.id == "digits")
    rows = [r.label for r in digits.rows]
    block = digits.blocks[0]
    mw = block.ma[rows.index("MW-Net (noise)")]
    assert not mw.complete and mw.best is None and ma_best_text(mw) == "— (1/4 cells missing)"
    ce_i = rows.index("CE Loss")
    ce = block.ma[ce_i]
    assert ce.complete and ce.n_seeds == 3
    assert ce.best == pytest.approx(sum(block.cells[(ce_i, c)].best_mean for c in range(4)) / 4)
    assert ce.best_std is not None
    t1 = next(t for t in rep.tables if t.spec.id == "table1")
    curvenet = t1.blocks[0].ma[[r.label for r in t1.rows].index("CurveNet (Ours)")]
    assert (curvenet.missing, curvenet.n_cells, curvenet.best) == (16, 18, None)


def test_bad_files_are_reported_by_path_and_skipped(report, tmp_path):
    rep, _ = report
    assert len(rep.runs.problems) == 2
    corrupt, old = sorted(rep.runs.problems)
    assert corrupt.startswith("digits/") and "seed-7/result.json: unreadable run record" in corrupt
    assert "seed-8/result.json: schema_version 2 is not the supported version 1" in old
    assert "## Skipped record files" in rep.markdown and "seed-7/result.json" in rep.markdown
    # more ways to be wrong, beside one good run: none stops the report
    good = fx.make_record(**DIGITS, method="ce", seed=1, imb=10, p=0.4)
    root = write_tree(tmp_path / "results", [good])
    bad_dir = root / "digits" / "x" / "ce" / "y"
    for i, text in enumerate([b"", b"[1, 2]", b'{"schema_version": 1}', b"\xff\xfe"]):
        (bad_dir / f"seed-{i}").mkdir(parents=True)
        (bad_dir / f"seed-{i}" / "result.json").write_bytes(text)
    (bad_dir / "seed-9").mkdir()
    (bad_dir / "seed-9" / "failed.json").write_text(json.dumps({**good, "status": "failed"}))  # no `failure`
    out = build_report(root, tmp_path / "out" / "LB.md", ReportOptions(figures=False))
    assert len(out.runs.problems) == 5 and all(p.startswith("digits/x/ce/y/seed-") for p in out.runs.problems)
    assert len(out.runs.frame) == 1


def test_failed_runs_are_shown_and_never_averaged(report, tmp_path):
    rep, _ = report
    digits = next(t for t in rep.tables if t.spec.id == "digits")
    rows = [r.label for r in digits.rows]
    cell = digits.blocks[0].cells[(rows.index("MW-Net (noise)"), 3)]
    assert (cell.n_done, cell.n_failed, cell.best_mean) == (0, 1, None)
    assert best_text(cell) == "failed (n=1)"
    assert "failed: MW-Net (noise) · IF 10, p 0.4, seed 1 at epoch 3 of phase main: NonFiniteLoss" in rep.markdown
    done = [fx.make_record(**DIGITS, method="ce", seed=s, imb=10, p=0.4) for s in (1, 2)]
    failed = fx.make_record(**DIGITS, method="ce", seed=3, imb=10, p=0.4, status="failed")
    _, cell, _ = digits_cell(write_tree(tmp_path, done + [failed]))
    assert (cell.n_done, cell.n_failed, cell.seeds) == (2, 1, (1, 2))
    assert cell.best_mean == pytest.approx(sum(r["metrics"]["top1_best"] for r in done) / 2)
    assert best_text(cell).endswith("(n=2) + 1 failed")
    early = fx.make_record(**DIGITS, method="ce", seed=4, imb=10, p=0.4, status="failed",
                           failure={"phase": "?", "epoch": -1, "cause": "DataError: no digits data"})
    rep = build_report(write_tree(tmp_path, [early]), tmp_path / "out" / "LB.md", ReportOptions(figures=False))
    assert "failed: CE Loss · IF 10, p 0.4, seed 4: DataError: no digits data (`digits/" in rep.markdown


def test_dirty_and_unofficial_runs_are_marked(report):
    rep, _ = report
    digits = next(t for t in rep.tables if t.spec.id == "digits")
    rows = [r.label for r in digits.rows]
    cell = digits.blocks[0].cells[(rows.index("CE Loss"), 3)]
    assert cell.dirty == 1 and best_text(cell).endswith(" †") and cell.usable
    assert "† CE Loss · IF 10, p 0.4: 1 run(s) from a dirty git tree." in rep.markdown
    assert "† 1 run(s) from a dirty tree" in rep.markdown  # the table header
    dirty = rep.runs_csv[rep.runs_csv["git_dirty"]]
    assert len(dirty) == 1 and dirty.iloc[0]["git_sha"] == fx.DIRTY_SHA
    t2 = next(t for t in rep.tables if t.spec.id == "table2")
    ours = t2.blocks[0].cells[(2, 5)]
    assert ours.unofficial == 1 and best_text(ours).endswith(" ‡")


def test_protocol_pins_keep_tables_apart(report):
    rep, _ = report
    t7 = next(t for t in rep.tables if t.spec.id == "table7")
    labels = [r.label for r in t7.rows]
    assert t7.blocks[0].cells[(labels.index("CurveNet, k=10"), 0)].n_done == 1
    assert t7.blocks[0].cells[(labels.index("CE, k=100"), 0)].n_done == 1
    runs = rep.runs_csv.set_index("path")
    k10 = runs[(runs["method"] == "curvenet") & (runs["meta_per_class"] == 10) & (runs["dataset"] == "cifar10")]
    assert list(k10["tables"]) == ["table7"]  # not in Table 8-10's SL=0 / P=64 / S=5 cell of the ablation grid
    ce = runs[(runs["method"] == "ce") & (runs["dataset"] == "cifar10")]
    assert list(ce["tables"]) == ["table7;table9;table10"]  # the same run serves every table it belongs to


def test_empty_results_render_every_table_as_not_run_yet(tmp_path):
    (tmp_path / "results").mkdir()
    rep = build_report(tmp_path / "results", tmp_path / "out" / "LB.md",
                       ReportOptions(available_suites={"cifar10"}, generated="today"))
    assert rep.markdown.count("## Table ") == 10
    assert "not run yet" in rep.markdown and "| 75.70" in rep.markdown
    assert "none yet; produce them with `curvebench cifar10`" in rep.markdown
    assert "Fig. 1: loss curves of clean and noisy samples skipped: no finished CurveNet run" in rep.markdown
    assert not rep.figures.figures and (tmp_path / "out" / RUNS_CSV).exists()


def test_unknown_method_gets_its_own_row(tmp_path):
    record = fx.make_record(**DIGITS, method="newmethod", seed=1, imb=10, p=0.4)
    table, cell, _ = digits_cell(write_tree(tmp_path, [record]), method="newmethod")
    assert table.rows[-1].label == "newmethod" and cell.n_done == 1


def test_specs_cover_every_paper_number():
    specs = load_specs()  # check_specs: every paper number is used by exactly one table slot
    assert specs.paper["table4"].value("Acc. (%)", "Bootstrapping") == 68.94
    assert specs.paper["table8"].value("time per meta step (ms)", "SL=3") == 41.98
    assert specs.paper["table1"].value("Ours", "CIFAR-100 MA") == 50.49
    counts = {k: sum(len(v) for v in t.rows.values()) for k, t in specs.paper.items()}
    assert counts == {"table1": 20, "table2": 18, "table3": 18, "table4": 6, "table5": 6, "table6": 24,
                      "table7": 8, "table8": 8, "table9": 4, "table10": 4}
