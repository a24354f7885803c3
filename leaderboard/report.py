"""The whole leaderboard: LEADERBOARD.md (tables, figures, notes), runs.csv and cells.csv beside it."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from leaderboard.aggregate import TableResult, build_tables
from leaderboard.figures import Figure, Figures, make_figures
from leaderboard.load import Runs, load_runs
from leaderboard.spec import Specs, load_specs
from leaderboard.tables import (
    DIRTY,
    FLAG,
    MIXED_HW,
    NOT_RUN,
    REPORTED_ONLY,
    UNOFFICIAL,
    RenderContext,
    interval_text,
    ranked_rows,
    render_table,
    slug,
)

FIGURES_DIR = "figures"
RUNS_CSV = "runs.csv"
CELLS_CSV = "cells.csv"


@dataclass
class ReportOptions:
    command: str = "curvebench leaderboard"  # the command that regenerates the file, shown in its header
    generated: str | None = None  # date shown in the header; None: from the records (``records_stamp``)
    results_label: str | None = None  # how the results directory is named; None: the path given
    available_suites: set[str] | None = None  # suites defined in this checkout; None: do not say
    figures: bool = True


@dataclass
class Report:
    markdown: str
    runs: Runs
    tables: list[TableResult]
    runs_csv: pd.DataFrame
    cells_csv: pd.DataFrame
    figures: Figures = field(default_factory=Figures)

    @property
    def flagged_cells(self) -> int:
        return int((self.cells_csv["status"] == "flagged").sum()) if len(self.cells_csv) else 0


def run_memberships(tables: list[TableResult]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """path -> tables whose cells hold the run; path -> tables where that cell is flagged."""
    used: dict[str, list[str]] = {}
    flagged: dict[str, list[str]] = {}
    for t in tables:
        for block in t.blocks:
            for cell in block.cells.values():
                for p in cell.runs["path"]:
                    if t.spec.id not in used.setdefault(p, []):
                        used[p].append(t.spec.id)
                    if cell.flag and t.spec.id not in flagged.setdefault(p, []):
                        flagged[p].append(t.spec.id)
    return used, flagged


def runs_frame(runs: Runs, tables: list[TableResult]) -> pd.DataFrame:
    used, flagged = run_memberships(tables)
    df = runs.frame.copy()
    df["tables"] = df["path"].map(lambda p: ";".join(used.get(p, [])))
    df["flagged_in"] = df["path"].map(lambda p: ";".join(flagged.get(p, [])))
    return df.sort_values("path").reset_index(drop=True).convert_dtypes()


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _delta(value: float | None, paper: float | None) -> float | None:
    return None if value is None or paper is None else _r(value - paper)


# measured tables only: 95% bootstrap intervals of the last-epoch mean (MA: stratified by cell) and the
# paired difference to CE (leaderboard.stats)
INTERVAL_COLUMNS = ["top1_last_ci_low", "top1_last_ci_high", "delta_ce_last", "delta_ce_ci_low", "delta_ce_ci_high",
                    "delta_ce_n"]


def interval_columns(t: TableResult, bi: int, ri: int, ci: int | None) -> dict[str, Any]:
    if not t.stats:
        return {}
    st = t.stats[bi]
    iv = st.ma.get(ri) if ci is None else st.cell.get((ri, ci))
    d = st.ma_delta.get(ri) if ci is None else st.cell_delta.get((ri, ci))
    out: dict[str, Any] = {}
    if iv is not None:
        out.update(top1_last_ci_low=_r(iv.low), top1_last_ci_high=_r(iv.high))
    if d is not None:
        out.update(delta_ce_last=_r(d.estimate), delta_ce_ci_low=_r(d.low), delta_ce_ci_high=_r(d.high),
                   delta_ce_n=d.n)
    return out


def document_order(tables: list[TableResult]) -> list[TableResult]:
    """Measured tables first (in tables.yaml order), then the paper's."""
    return [t for t in tables if t.spec.measured] + [t for t in tables if not t.spec.measured]


def summary_lines(tables: list[TableResult]) -> list[str]:
    """One line per measured table (its leader by MA last, with the interval), one for the paper's tables."""
    out = []
    for t in tables:
        if not t.spec.measured:
            continue
        link = f"[{t.spec.title.split(':')[0]}](#{slug(t.spec.title)})"
        for bi, block in enumerate(t.blocks):
            order, _ = ranked_rows(t, bi)
            ranked = [ri for ri in order if block.ma[ri].complete]
            n_runs = int((block.runs["status"] == "done").sum()) if len(block.runs) else 0
            name = f" ({block.spec.label})" if len(t.blocks) > 1 else ""
            if not ranked:
                out.append(f"{link}{name}: {'no runs yet' if not n_runs else 'no method has every cell yet'} "
                           f"({n_runs} finished runs).")
                continue
            top = ranked[0]
            iv = t.stats[bi].ma.get(top) if t.stats else None
            ci = f" {interval_text(iv)}" if iv is not None else ""
            out.append(f"{link}{name}: {len(ranked)} methods × {len(block.spec.columns)} cells, {n_runs} finished runs; "
                       f"best MA (last epoch): **{t.rows[top].label}** {block.ma[top].last:.2f}{ci}, "
                       f"n = {block.ma[top].n_seeds} seeds.")
    paper = [t for t in tables if not t.spec.measured]
    if paper:
        cells = [c for t in paper for b in t.blocks for (ri, _), c in b.cells.items() if not t.rows[ri].reported_only]
        ran = sum(bool(len(c.runs)) for c in cells)
        out.append(f"The paper's Tables 1–10: {ran} of {len(cells)} reproducible cells have runs; the others say "
                   f"*{NOT_RUN}*.")
    return out


def cells_frame(tables: list[TableResult]) -> pd.DataFrame:
    """One row per table slot: every cell, every MA, every reported-only paper number."""
    out: list[dict[str, Any]] = []
    for t in tables:
        for bi, block in enumerate(t.blocks):
            for ri, row in enumerate(t.rows):
                base = {"table": t.spec.id, "block": block.spec.label, "row": row.label}
                cols: list[int | None] = list(range(len(block.spec.columns)))
                if t.spec.has_ma:
                    cols.append(None)
                for ci in cols:
                    paper = t.paper_value(bi, ri, ci)
                    entry = {**base, "column": "MA" if ci is None else block.spec.columns[ci].label, "paper": paper}
                    if row.reported_only:
                        if paper is not None and ci is not None:
                            out.append({**entry, "status": REPORTED_ONLY})
                        continue
                    entry.update(interval_columns(t, bi, ri, ci))
                    if ci is None:
                        ma = block.ma[ri]
                        status = NOT_RUN if not ma.any_runs else ("complete" if ma.complete else
                                                                  f"{ma.missing}/{ma.n_cells} cells missing")
                        out.append({**entry, "status": status, "seeds": f"{ma.n_seeds} with every cell" if ma.complete else None,
                                    "top1_best_mean": _r(ma.best), "top1_best_std": _r(ma.best_std),
                                    "top1_last_mean": _r(ma.last), "top1_last_std": _r(ma.last_std),
                                    "delta_best": _delta(ma.best, paper)})
                        continue
                    c = block.cells[(ri, ci)]
                    status = (NOT_RUN if not len(c.runs) else "flagged" if c.flag else
                              "failed" if not c.n_done else "ok")
                    out.append({**entry, "status": status, "n_finished": c.n_done, "n_failed": c.n_failed,
                                "seeds": " ".join(str(s) for s in c.seeds), "top1_best_mean": _r(c.best_mean),
                                "top1_best_std": _r(c.best_std), "top1_last_mean": _r(c.last_mean),
                                "top1_last_std": _r(c.last_std),
                                "delta_best": _delta(c.best_mean, paper),
                                "dirty_runs": c.dirty, "unofficial_runs": c.unofficial,
                                "hardware_stacks": len(c.stacks),
                                "split_sha256": " ".join(h[:12] for h in c.split_hashes),
                                "config_hash": " ".join(h[:12] for h in c.config_hashes)})
    columns = ["table", "block", "row", "column", "status", "n_finished", "n_failed", "seeds", "top1_best_mean",
               "top1_best_std", "top1_last_mean", "top1_last_std", "paper", "delta_best", *INTERVAL_COLUMNS,
               "dirty_runs", "unofficial_runs", "hardware_stacks", "split_sha256", "config_hash"]
    return pd.DataFrame(out, columns=columns).convert_dtypes()


LEGEND = [
    "Each cell: mean ± sample std (ddof 1) over seeds, n = finished runs. **Last epoch** is the honest headline "
    "(no test-set selection) and has its own column; the **best epoch** is what the paper most likely reports "
    "(docs/methods.md §1.9), so it is the one compared with the paper's number: Δ = best − paper.",
    "MA = unweighted mean over a grid's cells, shown only when every cell has a usable mean; ± std over the seeds "
    "that have every cell. Otherwise the table says how many cells are missing.",
    f"{FLAG} flagged: the cell's runs disagree on the split hash or on the config hash (apart from the seed); the cell "
    "is left out of every mean and the table's notes list the runs.",
    "failed: a run that wrote `failed.json`; shown and counted, never averaged.",
    f"{DIRTY} a run from a dirty git tree. {UNOFFICIAL} a run on unofficial data (`split.official` false, e.g. "
    "synthetic data).",
    f"{MIXED_HW} the cell's runs come from more than one hardware/software stack (CPU instruction set or model, GPU, "
    "torch, MKL, oneDNN, CUDA or cuDNN version, threads); they agree statistically, not bit for bit (README, "
    "Reproducibility), and are averaged; the table's notes list the stacks.",
    f"*{REPORTED_ONLY}*: the paper's number for a method this benchmark does not run. *{NOT_RUN}*: no run record.",
    "Measured suites (first): methods ranked by MA (last epoch), the best in bold, with a 95% bootstrap interval "
    "over seeds and the paired difference to CE per cell (▲/▼: its interval excludes 0); the note under each "
    "table says how the intervals are made and what they mean with 3 seeds. Tables wider than a screen are "
    "stacked in parts.",
]


def records_stamp(df: pd.DataFrame) -> str:
    """When and from which code the records are: the latest ``finished`` time and the records' git shas.

    A function of the records, never of the clock, so regenerating from the same records gives the same file.
    """
    times = []
    for value in df["finished"].dropna():
        try:
            times.append(dt.datetime.fromisoformat(str(value)).astimezone(dt.timezone.utc))
        except ValueError:
            continue
    if not times:
        return "(no record has a finish time)"
    shas = sorted({str(s)[:12] for s in df["git_sha"].dropna()})
    code = (f"git {', '.join(shas[:3])}" + (f" and {len(shas) - 3} more" if len(shas) > 3 else "")
            if shas else "unknown git sha")
    return f"{max(times).strftime('%Y-%m-%d %H:%M UTC')} (latest record's finish time; records from {code})"


def render_document(runs: Runs, tables: list[TableResult], specs: Specs, figures: Figures | None,
                    options: ReportOptions, results_label: str) -> str:
    ctx = RenderContext(runs, specs, options.available_suites)
    df = runs.frame
    n_done, n_failed = int((df["status"] == "done").sum()), int((df["status"] == "failed").sum())
    generated = options.generated or records_stamp(df)
    parts = [
        "# curvebench leaderboard",
        "<!-- Generated file: do not edit. Change leaderboard/tables.yaml or leaderboard/paper_numbers.yaml "
        "and regenerate. -->",
        f"Regenerate with `{options.command}`. Generated {generated} from the run records under "
        f"`{results_label}`: {n_done} finished runs, {n_failed} failed, {len(runs.problems)} record file(s) skipped. "
        f"Paper numbers: {specs.paper_source}.",
        "Summary:\n\n" + "\n".join(f"- {line}" for line in summary_lines(tables)),
        "Contents: " + " · ".join(f"[{t.spec.title.split(':')[0]}](#{slug(t.spec.title)})" for t in tables)
        + (" · [Figures](#figures)" if figures is not None else ""),
        "How to read the tables:\n\n" + "\n".join(f"- {line}" for line in LEGEND),
        f"Machine-readable twins: [{RUNS_CSV}]({RUNS_CSV}) (one row per run, with the tables that use it) and "
        f"[{CELLS_CSV}]({CELLS_CSV}) (one row per table cell).",
    ]
    if runs.problems:
        parts.append("## Skipped record files\n\nThese files could not be read as run records and were left out:\n\n"
                     + "\n".join(f"- {p}" for p in runs.problems))
    used, _ = run_memberships(tables)
    orphans = df[~df["path"].isin(used)]
    if len(orphans):
        groups = Counter(f"{s or 'no suite'} / {d} / {m}" for s, d, m in
                         zip(orphans["suite"], orphans["dataset"], orphans["model"]))
        parts.append(f"## Runs in no table\n\n{len(orphans)} run(s) match no table's protocol, row and column "
                     "(other protocols, smoke runs, methods a table does not show); they are in "
                     f"[{RUNS_CSV}]({RUNS_CSV}) with an empty `tables` column. By suite / dataset / backbone: "
                     + ", ".join(f"{k} ×{n}" for k, n in sorted(groups.items())) + ".")
    for t in tables:
        parts.append(render_table(t, ctx).rstrip("\n"))
        if figures is not None:  # a measured table's figures follow it
            parts += [figure_text(f) for f in figures.figures if f.scope == t.spec.id]
    if figures is not None:
        fig_parts = ["## Figures"]
        for f in figures.figures:
            if f.scope is None:
                fig_parts.append(figure_text(f))
        if figures.notes:
            fig_parts.append("Skipped figures:\n\n" + "\n".join(f"- {n}" for n in figures.notes))
        parts.append("\n\n".join(fig_parts))
    return "\n\n".join(parts) + "\n"


def figure_text(f: Figure) -> str:
    return f"### {f.title}\n\n![{f.title}]({f.file})\n\n{f.caption}"


def build_report(results_dir: Path, output: Path, options: ReportOptions | None = None,
                 specs: Specs | None = None) -> Report:
    """Read ``results_dir`` and write ``output`` (markdown), runs.csv, cells.csv and figures beside it."""
    options = options or ReportOptions()
    specs = specs or load_specs()
    runs = load_runs(Path(results_dir))
    tables = document_order(build_tables(specs, runs))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figures = make_figures(runs, tables, output.parent / FIGURES_DIR, FIGURES_DIR) if options.figures else None
    label = options.results_label or str(results_dir)
    markdown = render_document(runs, tables, specs, figures, options, label)
    runs_df, cells_df = runs_frame(runs, tables), cells_frame(tables)
    output.write_text(markdown)
    runs_df.to_csv(output.parent / RUNS_CSV, index=False, lineterminator="\n")
    cells_df.to_csv(output.parent / CELLS_CSV, index=False, lineterminator="\n")
    return Report(markdown, runs, tables, runs_df, cells_df, figures or Figures())
