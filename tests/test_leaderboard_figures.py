"""Leaderboard figures (from fake CurveNet artifacts) and the `curvebench leaderboard` command."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from leaderboard.aggregate import build_tables
from leaderboard.cli import main
from leaderboard.figures import make_figures
from leaderboard.load import load_runs
from leaderboard.spec import load_specs

FIXTURES = Path(__file__).parent / "fixtures" / "leaderboard"
_spec = importlib.util.spec_from_file_location("lb_fixtures", FIXTURES / "make_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)  # type: ignore[union-attr]

DIGITS = dict(suite="digits", dataset="digits", model="digits_cnn", recipe="digits")
PNG = b"\x89PNG\r\n\x1a\n"


def _tree(root: Path, records: list[dict]) -> Path:
    for record in records:
        path = root / fx.run_path(record, "result.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    return root


def _figures(root: Path, out: Path):
    runs = load_runs(root)
    return make_figures(runs, build_tables(load_specs(), runs), out, "figures")


def test_figures_from_fake_curvenet_artifacts(tmp_path):
    ce = fx.make_record(**DIGITS, method="ce", seed=1, imb=10, p=0.4)
    cn = fx.make_record(**DIGITS, method="curvenet", seed=1, imb=10, p=0.4)
    root = _tree(tmp_path / "results", [ce, cn])
    arrays = fx.curvenet_artifacts(cn, probe_epochs=12)
    assert arrays["curves"].shape == (len(arrays["labels"]), 12) and arrays["is_noisy"].dtype == bool
    np.savez(root / fx.run_path(cn, "artifacts.npz"), **arrays)
    figs = _figures(root, tmp_path / "figures")
    assert {f.key for f in figs.figures} == {"fig1", "fig5", "fig6"}
    for f in figs.figures:
        assert f.file.startswith("figures/")
        assert (tmp_path / f.file).read_bytes()[:8] == PNG
    assert any("MA chart" in n for n in figs.notes)  # one cell per method: no complete MA yet


def test_figures_with_missing_or_malformed_inputs_are_skipped_with_a_note(tmp_path):
    cn = fx.make_record(**DIGITS, method="curvenet", seed=1, imb=10, p=0.4)
    root = _tree(tmp_path / "results", [cn])
    n = cn["split"]["num_train"]
    np.savez(root / fx.run_path(cn, "artifacts.npz"), labels=np.zeros(n, dtype=np.int64), curves=np.zeros(n),
             is_noisy=np.zeros(n, dtype=bool))  # curves not [n, T]; no weights
    figs = _figures(root, tmp_path / "figures")
    assert not figs.figures
    notes = " ".join(figs.notes)
    assert "Fig. 1" in notes and "`curves` in artifacts.npz has shape" in notes
    assert "Fig. 5" in notes and "lacks weights" in notes
    assert "Fig. 6" in notes and "both CE and CurveNet" in notes
    (root / fx.run_path(cn, "artifacts.npz")).write_bytes(b"not a zip file")
    assert "cannot read" in " ".join(_figures(root, tmp_path / "figures").notes)


def test_cli_writes_markdown_and_csvs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "board" / "LEADERBOARD.md"
    # figures: see the snapshot test; the fixture's two damaged records make the exit status 1 (issue 11)
    assert main([str(fx.RESULTS), "-o", str(out), "--no-figures"]) == 1
    text = out.read_text()
    assert text.startswith("# curvebench leaderboard")
    assert f"Regenerate with `curvebench leaderboard {fx.RESULTS} -o {out} --no-figures`" in text
    readable = len(list(fx.RESULTS.rglob("*.json"))) - 2  # all but the two bad files
    assert (out.parent / "runs.csv").read_text().count("\n") == 1 + readable
    assert (out.parent / "cells.csv").exists()
    captured = capsys.readouterr()
    assert "skipped: digits/" in captured.err and "2 file(s) skipped, 2 flagged cell(s)" in captured.out
    assert main([str(fx.RESULTS), "-o", str(out), "--no-figures", "--strict"]) == 1
    monkeypatch.setenv("CURVEBENCH_RESULTS", str(tmp_path / "nowhere"))
    assert main(["-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
