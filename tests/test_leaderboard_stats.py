"""Leaderboard: measured tables (ranked by MA, bold best, n, stacked blocks), bootstrap intervals over
seeds and the paired difference to CE, the Fashion-MNIST table and figures, and byte-identical rebuilds."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leaderboard.figures import _axis_bottom
from leaderboard.report import ReportOptions, build_report
from leaderboard.stats import mean_ci, stratified_mean_ci
from leaderboard.tables import MAX_VALUE_COLUMNS, stacked

FIXTURES = Path(__file__).parent / "fixtures" / "leaderboard"
_spec = importlib.util.spec_from_file_location("lb_fixtures", FIXTURES / "make_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)  # type: ignore[union-attr]

DIGITS = dict(suite="digits", dataset="digits", model="digits_cnn", recipe="digits")
CELLS = [(1, 0.0), (1, 0.4), (10, 0.0), (10, 0.4)]
# last-epoch accuracy per method, as CE's value on that seed plus an offset per seed
CE_LAST = {1: 81.0, 2: 84.0, 3: 82.0}
OFFSETS = {"ce": (0.0, 0.0, 0.0), "curvenet": (5.0, 5.0, 5.0), "focal": (1.0, -1.0, 0.0)}


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("lb") / "LEADERBOARD.md"
    return build_report(fx.RESULTS, out, ReportOptions(**fx.SNAPSHOT_OPTIONS, figures=True)), out.parent


def hand_tree(root: Path) -> Path:
    """Digits grid, 3 seeds: CE, CurveNet = CE + 5 on every seed, Focal = CE + (1, -1, 0)."""
    for method, offsets in OFFSETS.items():
        for ci, (imb, p) in enumerate(CELLS):
            for seed, off in zip((1, 2, 3), offsets):
                record = fx.make_record(**DIGITS, method=method, seed=seed, imb=imb, p=p)
                record["metrics"]["top1_last"] = CE_LAST[seed] - ci + off
                path = root / fx.run_path(record, "result.json")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record))
    return root


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hand")
    rep = build_report(hand_tree(tmp / "results"), tmp / "out" / "LEADERBOARD.md",
                       ReportOptions(generated="today", figures=False))
    return rep, next(t for t in rep.tables if t.spec.id == "digits")


def section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    end = md.find("\n## ", start + 1)
    return md[start:end if end >= 0 else None]


def table_after(text: str, heading: str) -> list[list[str]]:
    """Rows (cells stripped) of the first markdown table after ``heading``, without the separator line."""
    lines = text[text.index(heading):].split("\n\n", 2)[1].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines if not line.startswith("|--")]


# -- intervals -----------------------------------------------------------------------------------
def test_identical_seeds_give_a_zero_width_interval():
    iv = stratified_mean_ci([[90.0, 90.0, 90.0], [80.0, 80.0, 80.0]])
    assert (iv.estimate, iv.low, iv.high, iv.n) == (85.0, 85.0, 85.0, 6)
    assert iv.excludes_zero and iv.marker == "▲"
    mixed = stratified_mean_ci([[90.0, 90.0, 90.0], [79.0, 80.0, 81.0]])  # one stratum varies: scipy's path
    assert mixed.low < 85.0 < mixed.high and mixed.high - mixed.low <= 2.0 / 2 + 1e-9


def test_three_seeds_percentile_interval_is_their_range():
    # 3 values: each extreme resample (all three the same value) has probability 1/27 > 2.5%
    iv = mean_ci([1.0, 2.0, 3.0])
    assert (iv.estimate, iv.low, iv.high) == (2.0, 1.0, 3.0) and iv.marker == "▲"
    assert not mean_ci([-1.0, 0.5, 1.0]).excludes_zero and mean_ci([-1.0, 0.5, 1.0]).marker == ""
    assert mean_ci([-3.0, -2.0, -1.0]).marker == "▼"


def test_no_interval_below_two_seeds():
    assert mean_ci([5.0]) is None and mean_ci([]) is None
    assert stratified_mean_ci([[1.0, 2.0], [3.0]]) is None


def test_intervals_are_deterministic():
    data = [[70.1, 73.4, 71.9], [80.2, 79.0, 81.5, 80.0]]
    assert stratified_mean_ci(data) == stratified_mean_ci(data)
    a = np.random.default_rng(1).normal(80, 2, (7, 3))
    assert stratified_mean_ci(list(a)) == stratified_mean_ci(list(a))


def test_paired_difference_to_ce(hand):
    rep, table = hand
    labels = [r.label for r in table.rows]
    st = table.stats[0]
    cn, fo, ce = labels.index("CurveNet (Ours)"), labels.index("Focal"), labels.index("CE Loss")
    assert st.reference == ce
    for ci in range(4):  # CurveNet is CE + 5 on every seed: a zero-width interval at +5, marked
        iv = st.cell_delta[(cn, ci)]
        assert (iv.estimate, iv.low, iv.high, iv.n) == (5.0, 5.0, 5.0, 3) and iv.marker == "▲"
        iv = st.cell_delta[(fo, ci)]  # Focal is CE + (1, -1, 0): the interval is [-1, 1], no marker
        assert (iv.estimate, iv.low, iv.high) == (0.0, -1.0, 1.0) and iv.marker == ""
    assert (st.ma_delta[cn].low, st.ma_delta[cn].high) == (5.0, 5.0)
    assert st.ma_delta[fo].low < 0 < st.ma_delta[fo].high
    # MA interval: stratified by cell, around the MA of the table
    ma = table.blocks[0].ma[cn]
    assert st.ma[cn].estimate == pytest.approx(ma.last) and st.ma[cn].low < ma.last < st.ma[cn].high
    md = section(rep.markdown, "Digits")
    rows = {r[0]: r for r in table_after(md, "**Difference to CE Loss per cell**")}
    assert rows["CurveNet (Ours)"][1:] == ["+5.00 [+5.00, +5.00] ▲"] * 4
    assert rows["Focal"][1:] == ["+0.00 [-1.00, +1.00]"] * 4
    assert "CE Loss" not in rows  # the reference has no row of its own
    assert "scipy.stats.bootstrap" in md and "percentile" in md and "10,000 resamples" in md


def test_cells_csv_has_the_intervals(hand):
    rep, _ = hand
    cells = rep.cells_csv
    cn = cells[(cells["table"] == "digits") & (cells["row"] == "CurveNet (Ours)")].set_index("column")
    assert list(cn.loc["MA", ["delta_ce_last", "delta_ce_ci_low", "delta_ce_ci_high"]]) == [5.0, 5.0, 5.0]
    assert cn.loc["IF 1, p 0", "delta_ce_n"] == 3
    assert cn.loc["IF 1, p 0", "top1_last_ci_low"] <= cn.loc["IF 1, p 0", "top1_last_mean"] \
        <= cn.loc["IF 1, p 0", "top1_last_ci_high"]
    ce = cells[(cells["table"] == "digits") & (cells["row"] == "CE Loss")]
    assert ce["delta_ce_last"].isna().all() and ce["top1_last_ci_low"].notna().all()
    t1 = cells[cells["table"] == "table1"]
    assert t1["top1_last_ci_low"].isna().all()  # paper tables get no intervals


# -- the measured tables' layout -----------------------------------------------------------------
def test_rows_are_ranked_by_ma_and_the_best_is_bold(hand):
    rep, table = hand
    md = section(rep.markdown, "Digits")
    ranking = table_after(md, "**Ranking by MA**")
    assert [r[1] for r in ranking[1:]] == ["**CurveNet (Ours)**", "CE Loss", "Focal"]  # tie: spec order
    assert [r[0] for r in ranking[1:]] == ["1", "2", "3"]
    assert ranking[1][2].startswith("**") and "(n=3)" in ranking[1][2] and "**" not in ranking[2][2]
    assert ranking[2][-1] == "reference" and ranking[1][-1].endswith("▲")
    mas = [table.blocks[0].ma[[r.label for r in table.rows].index(m)].last for m in ("CurveNet (Ours)", "CE Loss")]
    assert mas[0] > mas[1]
    last = table_after(md, "**Last epoch per cell**")
    assert [r[0] for r in last[1:]] == ["CurveNet (Ours)", "CE Loss", "Focal"]
    assert all(c.startswith("**") for c in last[1][1:]) and not any("**" in c for r in last[2:] for c in r)


def test_every_reproduced_cell_shows_n(fixture_report):
    rep, _ = fixture_report
    for title in ("Fashion-MNIST", "Digits"):
        md = section(rep.markdown, title)
        for heading in ("**Last epoch per cell**", "**Best epoch per cell**"):
            for row in table_after(md, heading)[1:]:
                for cell in row[1:]:
                    assert "±" not in cell or "(n=" in cell, (title, row[0], cell)


def test_no_table_is_wider_than_a_screen(fixture_report):
    rep, _ = fixture_report
    widths = [line.count("|") - 1 for line in rep.markdown.splitlines() if line.startswith("|")]
    assert max(widths) <= 2 + MAX_VALUE_COLUMNS  # row labels (ranking: # and method) + value columns
    t2 = section(rep.markdown, "Table 2")  # 25 columns in the paper's layout: stacked in parts
    assert "*Part 1 of 3 (IF 50, p 0 best … IF 100, p 0 last):*" in t2 and "*Part 3 of 3" in t2
    for value in ("77.55", "72.38", "63.08", "91.78", "90.29", "87.51", "65.91", "90.69"):  # no column lost
        assert f"| {value} " in t2


def test_stacked_blocks_are_balanced_and_keep_groups():
    headers = ["Method"] + [f"c{i}" for i in range(18)]
    rows = [["A"] + [str(i) for i in range(18)]]
    parts = stacked(rows, headers).split("*Part ")[1:]
    assert len(parts) == 3 and all(p.count("| c") == 6 for p in parts)  # 6 + 6 + 6, not 8 + 8 + 2
    assert all("| A " in p for p in parts)
    grouped = stacked(rows, headers[:13], [4, 4, 4]).split("*Part ")[1:]  # groups of 4 never split
    assert [p.count("| c") for p in grouped] == [8, 4]
    assert "Part" not in stacked(rows, headers[:9])


def test_document_opens_with_what_was_measured(fixture_report):
    md = fixture_report[0].markdown
    fm, dg, t1 = md.index("## Fashion-MNIST:"), md.index("## Digits:"), md.index("## Table 1:")
    assert md.index("Summary:") < md.index("How to read the tables") < fm < dg < t1
    summary = md[md.index("Summary:"):md.index("Contents:")]
    assert re.search(r"Fashion-MNIST\]\(#fashion-mnist-[^)]*\): 3 methods × 7 cells, 63 finished runs; best MA "
                     r"\(last epoch\): \*\*CurveNet \(Ours\)\*\* \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\], n = 3 seeds", summary)
    assert "reproducible cells have runs" in summary
    contents = md[md.index("Contents:"):].splitlines()[0]
    assert contents.index("[Fashion-MNIST]") < contents.index("[Digits]") < contents.index("[Table 1]")


# -- Fashion-MNIST --------------------------------------------------------------------------------
def test_fmnist_table_has_the_suite_grid(fixture_report):
    rep, _ = fixture_report
    fm = next(t for t in rep.tables if t.spec.id == "fmnist")
    assert fm.spec.measured and [c.label for c in fm.blocks[0].spec.columns] == [
        "IF 1, p 0", "IF 1, p 0.4", "IF 10, p 0", "IF 10, p 0.4", "IF 50, p 0", "IF 50, p 0.4",
        "IF 10, p 0.4, unif_prior"]
    labels = [r.label for r in fm.rows]
    for method in ("CE Loss", "MW-Net (noise)", "CurveNet (Ours)"):
        ri = labels.index(method)
        assert all(fm.blocks[0].cells[(ri, ci)].n_done == 3 for ci in range(7)) and fm.blocks[0].ma[ri].complete
    noise = [set(fm.blocks[0].cells[(labels.index("CE Loss"), ci)].runs["noise_model"]) for ci in range(7)]
    assert noise == [{"flip2"}] * 6 + [{"unif_prior"}]
    assert not len(rep.runs_csv[(rep.runs_csv["dataset"] == "fmnist") & (rep.runs_csv["tables"] != "fmnist")])


def test_each_measured_suite_has_its_figures(fixture_report):
    rep, out = fixture_report
    figs = rep.figures.figures
    for scope in ("fmnist", "digits"):
        mine = [f for f in figs if f.scope == scope]
        assert {f.key for f in mine} == {f"ma_{scope}_0_{'fashion-mnist' if scope == 'fmnist' else 'digits'}",
                                         "fig1", "fig5", "fig6"}
        for f in mine:
            assert (out / f.file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = rep.markdown
    fm = section(md, "Fashion-MNIST")
    for name in ("fig1_loss_curves_fmnist.png", "fig5_weights_fmnist.png", "fig6_confusion_fmnist.png"):
        assert f"(figures/{name})" in fm  # right under the suite's table
    assert "the y axis starts at" in fm and "fmnist, IF 50, flip2 p 0.4" in fm
    assert "Fig. 1: loss curves of clean and noisy samples skipped" in section(md, "Figures")  # no CIFAR artifacts


def test_ma_chart_axis_starts_at_zero_or_is_marked_cut(fixture_report):
    assert _axis_bottom([35.0, 90.0]) == 0.0
    assert _axis_bottom([69.9, 95.0]) == 50.0 and _axis_bottom([81.0]) == 70.0
    captions = [f.caption for f in fixture_report[0].figures.figures if f.key.startswith("ma_")]
    assert captions and all("the y axis starts at 0" in c or "not 0 (cut, marked" in c for c in captions)


def test_rebuild_is_byte_identical(tmp_path):
    root = hand_tree(tmp_path / "results")
    cn = fx.make_record(**DIGITS, method="curvenet", seed=1, imb=10, p=0.4)
    np.savez(root / fx.run_path(cn, "artifacts.npz"), **fx.curvenet_artifacts(cn))  # Fig. 1 and 5 too
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name / "LEADERBOARD.md"
        build_report(root, out, ReportOptions(generated="today", results_label="results", command="cmd"))
        outs.append(out.parent)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert len(files) == 7 and files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    for rel in files:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    cells = pd.read_csv(outs[0] / "cells.csv")
    assert {"top1_last_ci_low", "top1_last_ci_high", "delta_ce_ci_low", "delta_ce_ci_high"} <= set(cells.columns)
