"""Markdown rendering of one leaderboard table (tabulate): header block, the table in the paper's
layout, per-cell grids for MA tables, and the notes (flags, failures, markers, paper footnotes).

Cells show mean ± sample std over seeds with n. The best-epoch figure is compared with the paper
(Δ = reproduced − paper); the last-epoch figure has its own column and is the honest headline.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd
from tabulate import tabulate

from leaderboard.aggregate import BlockResult, CellStats, ExtraStats, MAStats, TableResult, split_consistency
from leaderboard.load import Runs
from leaderboard.spec import BlockSpec, Specs, match_label
from leaderboard.stats import METHOD_NOTE, BlockStats, Interval

DIRTY, UNOFFICIAL, FLAG, MIXED_HW = "†", "‡", "⚠", "§"
NOT_RUN = "not run yet"
REPORTED_ONLY = "reported only"
MEASURED_METRIC = ("top-1 % on the clean test set, mean ± std over seeds (n runs); **last epoch is the honest "
                   "headline** (methods ranked by its MA); the best epoch (selected on the test set) is shown beside.")
METRIC = ("top-1 % on the clean test set, mean ± std over seeds (n runs); **last epoch is the honest "
          "headline**; the best epoch is compared with the paper (Δ = best − paper).")


@dataclass
class RenderContext:
    runs: Runs
    specs: Specs
    available_suites: set[str] | None = None  # None: do not say whether a suite exists


# -- formatting --------------------------------------------------------------------------------
def num(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def mean_std(mean: float | None, std: float | None, n: int | None = None) -> str:
    if mean is None:
        return ""
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
    return text + (f" (n={n})" if n is not None else "")


def delta(value: float | None, paper: float | None) -> str:
    return "" if value is None or paper is None else f"{value - paper:+.2f}"


def markers(cell: CellStats) -> str:
    return ((f" {DIRTY}" if cell.dirty else "") + (f" {UNOFFICIAL}" if cell.unofficial else "")
            + (f" {MIXED_HW}" if cell.mixed_hardware else ""))


def best_text(cell: CellStats) -> str:
    return measured_cell_text(cell, "best")


def last_text(cell: CellStats) -> str:
    return mean_std(cell.last_mean, cell.last_std) if cell.usable else ""


def ma_best_text(ma: MAStats) -> str:
    if not ma.any_runs:
        return NOT_RUN
    if not ma.complete:
        return f"— ({ma.missing}/{ma.n_cells} cells missing" + (f", {ma.flagged} flagged)" if ma.flagged else ")")
    return mean_std(ma.best, ma.best_std, ma.n_seeds)


def ma_last_text(ma: MAStats) -> str:
    return mean_std(ma.last, ma.last_std) if ma.complete and ma.any_runs else ""


def extra_text(extra: ExtraStats) -> str:
    return mean_std(extra.mean, extra.std, extra.n) if extra.mean is not None else ""


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _md(rows: list[list[str]], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


MAX_VALUE_COLUMNS = 8  # value columns (beside the row labels) in one markdown table


def _pack(groups: list[int], limit: int) -> list[list[int]]:
    """Greedy contiguous packing of column groups (sizes) into blocks of at most ``limit`` columns."""
    blocks: list[list[int]] = [[]]
    width = 0
    for gi, size in enumerate(groups):
        if blocks[-1] and width + size > limit:
            blocks.append([])
            width = 0
        blocks[-1].append(gi)
        width += size
    return blocks


def stacked(rows: list[list[str]], headers: list[str], groups: list[int] | None = None, labels: int = 1) -> str:
    """A table too wide for a screen as stacked tables of at most MAX_VALUE_COLUMNS value columns each.

    The first ``labels`` columns (the row labels) repeat in every block; ``groups`` are the sizes of
    the value-column groups kept together (e.g. best | paper | Δ | last of one cell); default: one each.
    Blocks are balanced (18 columns -> 6 + 6 + 6, not 8 + 8 + 2).
    """
    n_values = len(headers) - labels
    groups = groups if groups is not None else [1] * n_values
    assert sum(groups) == n_values, (groups, n_values)
    if n_values <= MAX_VALUE_COLUMNS:
        return _md(rows, headers)
    n_blocks = len(_pack(groups, MAX_VALUE_COLUMNS))
    limit = max(max(groups), -(-n_values // n_blocks))
    packed = _pack(groups, limit)
    if len(packed) > n_blocks:
        packed = _pack(groups, MAX_VALUE_COLUMNS)
    starts = [labels + sum(groups[:gi]) for gi in range(len(groups))]
    out = []
    for bi, block in enumerate(packed):
        cols = list(range(labels)) + [c for gi in block for c in range(starts[gi], starts[gi] + groups[gi])]
        first, last = headers[starts[block[0]]], headers[starts[block[-1]] + groups[block[-1]] - 1]
        out.append(f"*Part {bi + 1} of {len(packed)} ({first} … {last}):*\n\n"
                   + _md([[r[c] for c in cols] for r in rows], [headers[c] for c in cols]))
    return "\n\n".join(out)


def _short_list(items: Iterable[str], limit: int = 8, what: str = "") -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", … (+{len(items) - limit} more{what})" if len(items) > limit else "")


def slug(title: str) -> str:
    """GitHub's heading anchor."""
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return keep.replace(" ", "-")


# -- header ------------------------------------------------------------------------------------
PROTOCOL_FIELDS = (("dataset", "dataset", "dataset"), ("split.noise_model", "noise_model", "noise"),
                   ("split.order", "order", "order"), ("split.imbalance_profile", "imbalance_profile", "imbalance"),
                   ("model", "model", "backbone"))


def protocol_text(block: BlockSpec, runs: pd.DataFrame) -> str:
    """Pinned protocol values, else the values seen in the runs; what neither gives is left to the suite."""
    parts, unknown = [], []
    for key, column, name in PROTOCOL_FIELDS:
        if key in block.where:
            vals = [_value(block.where[key])]
        else:
            vals = sorted({str(v) for v in runs[column].dropna()}) if len(runs) else []
        if vals:
            parts.append(f"{name} {', '.join(vals)}")
        else:
            unknown.append(name)
    other = {k: v for k, v in block.where.items() if k not in {f[0] for f in PROTOCOL_FIELDS}}
    if other:  # e.g. the meta-set size, or Table 7's fixed cell
        parts.append(match_label(other))
    if len(runs):
        parts.append("recipe " + ", ".join(sorted({f"{r} ({int(e)} epochs)" if pd.notna(e) else str(r)
                                                   for r, e in zip(runs["recipe"], runs["epochs"])})))
    else:
        unknown += ["recipe", "epochs"]
    if unknown:
        parts.append(", ".join(unknown) + " as set by the suite")
    return " · ".join(parts)


def header_lines(result: TableResult, ctx: RenderContext) -> list[str]:
    spec = result.spec
    runs = result.runs
    lines = []
    if spec.paper and spec.paper in ctx.specs.paper:
        lines.append(f"- **Paper:** {ctx.specs.paper[spec.paper].caption}.")
    for block in result.blocks:
        label = f" ({block.spec.label})" if len(result.blocks) > 1 else ""
        lines.append(f"- **Protocol{label}:** {protocol_text(block.spec, block.runs)}.")
    lines.append(f"- **Metric:** {METRIC if spec.paper else MEASURED_METRIC}")
    if not len(runs):
        missing = [s for s in spec.suites if ctx.available_suites is not None and s not in ctx.available_suites]
        how = ", ".join(f"`curvebench {s}`" for s in spec.suites if s not in missing)
        text = "none yet" + (f"; produce them with {how}" if how else "")
        if missing:
            text += ("; " if how else " ") + "(suite " + ", ".join(f"`{s}`" for s in missing) + \
                " not defined in this checkout yet)"
        lines.append(f"- **Runs:** {text}.")
        return lines
    done = runs[runs["status"] == "done"]
    splits = sorted(done["split_sha256"].unique())
    lines.append(f"- **Splits ({len(splits)}):** " + (_short_list((f"`{h[:8]}`" for h in splits), what="; see runs.csv")
                                                     if splits else "none finished") + ".")
    shas = sorted(runs["git_sha"].fillna("unknown").map(lambda s: s[:7]).unique())
    dirty = int(runs["git_dirty"].sum())
    versions = sorted(runs["harness_version"].fillna("?").astype(str).unique())
    code = f"git {', '.join(f'`{s}`' for s in shas)} (harness {', '.join(versions)})"
    if dirty:
        code += f"; {DIRTY} {dirty} run(s) from a dirty tree"
    lines.append(f"- **Code:** {code}.")
    stacks = Counter(runs["hardware"].fillna("unknown"))
    hw = "; ".join(f"{d} ×{n}" for d, n in sorted(stacks.items()))
    mixed = sum(c.mixed_hardware for b in result.blocks for c in b.cells.values())
    if mixed:
        hw += f"; {MIXED_HW} {mixed} cell(s) mix stacks"
    lines.append(f"- **Hardware ({len(stacks)} stack{'s' if len(stacks) != 1 else ''}):** {hw}.")
    seeds = ", ".join(str(s) for s in sorted(runs["seed"].unique()))
    n_failed = int((runs["status"] == "failed").sum())
    unofficial = int((~runs["official"].astype(bool)).sum())
    ran = ", ".join(f"`{s}`" for s in sorted(runs["suite"].fillna("none").astype(str).unique()))
    text = f"{len(done)} finished, {n_failed} failed; seeds {seeds}; from suites {ran}"
    if unofficial:
        text += f"; {UNOFFICIAL} {unofficial} run(s) on unofficial data"
    lines.append(f"- **Runs:** {text}.")
    return lines


# -- tables ------------------------------------------------------------------------------------
def _has_paper(result: TableResult) -> bool:
    return bool(result.paper)


def cells_table(result: TableResult) -> str:
    """Layout ``cells``: per column best | paper | Δ | last (+ MA best | MA last)."""
    paper = _has_paper(result)
    multi = len(result.blocks) > 1
    headers = [result.spec.row_header]
    for block in result.blocks:
        for col in block.spec.columns:
            name = f"{block.spec.label}: {col.label}" if multi else col.label
            headers += [f"{name} best"] + (["paper", "Δ"] if paper else []) + [f"{name} last"]
        if result.spec.ma:
            name = f"{block.spec.label} MA" if multi else "MA"
            headers += [f"{name} best"] + (["paper", "Δ"] if paper else []) + [f"{name} last"]
    group = 4 if paper else 2  # one cell's columns stay in one block
    rows = []
    for ri, row in enumerate(result.rows):
        line = [row.label]
        for bi, block in enumerate(result.blocks):
            for ci in range(len(block.spec.columns)):
                p = result.paper_value(bi, ri, ci)
                if row.reported_only:
                    line += [REPORTED_ONLY] + ([num(p), ""] if paper else []) + [""]
                    continue
                cell = block.cells[(ri, ci)]
                line += [best_text(cell)] + ([num(p), delta(cell.best_mean, p)] if paper else []) + [last_text(cell)]
            if result.spec.ma:
                p = result.paper_value(bi, ri, None) if result.spec.ma else None
                ma = block.ma[ri]
                line += [ma_best_text(ma)] + ([num(p), delta(ma.best, p)] if paper else []) + [ma_last_text(ma)]
        rows.append(line)
    return stacked(rows, headers, [group] * ((len(headers) - 1) // group))


def ma_table(result: TableResult) -> str:
    """Layout ``ma``: per block MA best | paper | Δ | MA last (+ extras | paper)."""
    paper = _has_paper(result)
    headers = [result.spec.row_header]
    groups = []
    for block in result.blocks:
        name = block.spec.label
        headers += [f"{name} MA best"] + (["paper", "Δ"] if paper else []) + [f"{name} MA last"]
        groups.append(4 if paper else 2)
        for extra in block.spec.extras:
            headers += [extra.label] + (["paper"] if paper else [])
            groups.append(2 if paper else 1)
    rows = []
    for ri, row in enumerate(result.rows):
        line = [row.label]
        for bi, block in enumerate(result.blocks):
            p = result.paper_value(bi, ri, None)
            if row.reported_only:
                line += [REPORTED_ONLY] + ([num(p), ""] if paper else []) + [""]
            else:
                ma = block.ma[ri]
                line += [ma_best_text(ma)] + ([num(p), delta(ma.best, p)] if paper else []) + [ma_last_text(ma)]
            for ei in range(len(block.spec.extras)):
                stats = block.extras[(ri, ei)]
                line += [extra_text(stats)] + ([num(result.extras_paper.get((bi, ri, ei)))] if paper else [])
        rows.append(line)
    return stacked(rows, headers, groups)


def cell_grids(result: TableResult, block: BlockResult) -> list[str]:
    """Per-cell grids (best epoch, then last epoch) of the rows that have runs."""
    ris = [ri for ri, row in enumerate(result.rows)
           if not row.reported_only and any(len(block.cells[(ri, ci)].runs) for ci in range(len(block.spec.columns)))]
    if not ris:
        return [f"*{block.spec.label}, per cell:* no runs yet."]
    out = []
    headers = [result.spec.row_header] + [c.label for c in block.spec.columns]
    for name, fn in (("best epoch", best_text), ("last epoch", last_text)):
        rows = [[result.rows[ri].label] + [(fn(block.cells[(ri, ci)]) if len(block.cells[(ri, ci)].runs) else "")
                                           or "—" for ci in range(len(block.spec.columns))] for ri in ris]
        out.append(f"*{block.spec.label}, per cell, {name} (—: no usable run):*\n\n" + stacked(rows, headers))
    return out


# -- measured tables (ranked by MA, with bootstrap intervals) ------------------------------------
def ranked_rows(result: TableResult, bi: int) -> tuple[list[int], list[int]]:
    """(rows with runs: complete MA by MA last descending, then the others in spec order; rows without runs)."""
    block = result.blocks[bi]
    ncol = len(block.spec.columns)
    shown = [ri for ri, row in enumerate(result.rows)
             if not row.reported_only and any(len(block.cells[(ri, ci)].runs) for ci in range(ncol))]
    complete = sorted((ri for ri in shown if block.ma[ri].complete), key=lambda ri: (-block.ma[ri].last, ri))
    rest = [ri for ri in shown if ri not in complete]
    unrun = [ri for ri, row in enumerate(result.rows) if not row.reported_only and ri not in shown]
    return complete + rest, unrun


def _bold(text: str, on: bool) -> str:
    return f"**{text}**" if on and text else text


def _best(values: dict[int, float | None]) -> set[int]:
    """Keys whose value is the largest at the shown precision (ties all bold)."""
    shown = {k: round(v, 2) for k, v in values.items() if v is not None}
    top = max(shown.values(), default=None)
    return {k for k, v in shown.items() if v == top}


def _stat_text(mean: float | None, std: float | None, n: int, bold: bool) -> str:
    return _bold(mean_std(mean, std), bold) + f" (n={n})" if mean is not None else ""


def measured_cell_text(cell: CellStats, which: str, bold: bool = False) -> str:
    """One cell of a measured table: mean ± std (n) of the ``best`` or ``last`` epoch, or why not."""
    if not len(cell.runs):
        return NOT_RUN
    if cell.flag:
        text = f"{FLAG} flagged (n={cell.n_done})"
    elif cell.n_done == 0:
        text = f"failed (n={cell.n_failed})"
    else:
        text = _stat_text(getattr(cell, f"{which}_mean"), getattr(cell, f"{which}_std"), cell.n_done, bold)
    if cell.n_failed and cell.n_done:
        text += f" + {cell.n_failed} failed"
    return text + markers(cell)


def interval_text(iv: Interval | None, signed: bool = False) -> str:
    """``[low, high]``; signed (a difference): ``+estimate [low, high]`` and ▲/▼ where it excludes 0."""
    if iv is None:
        return ""
    if not signed:
        return f"[{iv.low:.2f}, {iv.high:.2f}]"
    return f"{iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]" + (f" {iv.marker}" if iv.marker else "")


def ranking_table(result: TableResult, bi: int, order: list[int]) -> str:
    block, stats = result.blocks[bi], result.stats[bi]
    best_last = _best({ri: block.ma[ri].last for ri in order})
    best_best = _best({ri: block.ma[ri].best for ri in order})
    headers = ["#", result.spec.row_header, "MA last (n seeds)", "95% CI", "MA best (n seeds)"]
    if stats.reference is not None:
        headers.append(f"MA − {result.rows[stats.reference].label} [95% CI]")
    rows = []
    for rank, ri in enumerate(order, 1):
        ma = block.ma[ri]
        if ma.complete:
            line = [str(rank), _bold(result.rows[ri].label, ri in best_last),
                    _stat_text(ma.last, ma.last_std, ma.n_seeds, ri in best_last),
                    interval_text(stats.ma.get(ri)) or "n < 2",
                    _stat_text(ma.best, ma.best_std, ma.n_seeds, ri in best_best)]
        else:
            line = ["–", result.rows[ri].label, ma_best_text(ma), "", ""]
        if stats.reference is not None:
            line.append("reference" if ri == stats.reference else interval_text(stats.ma_delta.get(ri), signed=True))
        rows.append(line)
    return _md(rows, headers)


def per_cell_table(result: TableResult, bi: int, order: list[int], which: str) -> str:
    block = result.blocks[bi]
    ncol = len(block.spec.columns)
    best = [_best({ri: getattr(block.cells[(ri, ci)], f"{which}_mean") for ri in order}) for ci in range(ncol)]
    headers = [result.spec.row_header] + [c.label for c in block.spec.columns]
    rows = [[result.rows[ri].label] + [measured_cell_text(block.cells[(ri, ci)], which, ri in best[ci])
                                       for ci in range(ncol)] for ri in order]
    return stacked(rows, headers)


def delta_table(result: TableResult, bi: int, order: list[int]) -> str:
    block, stats = result.blocks[bi], result.stats[bi]
    ncol = len(block.spec.columns)
    headers = [result.spec.row_header] + [c.label for c in block.spec.columns]
    rows = []
    for ri in order:
        if ri == stats.reference:
            continue
        line = [result.rows[ri].label]
        for ci in range(ncol):
            iv, cell = stats.cell_delta.get((ri, ci)), block.cells[(ri, ci)]
            text = interval_text(iv, signed=True) or "—"
            if iv is not None and iv.n != cell.n_done:
                text += f" (n={iv.n})"
            line.append(text)
        rows.append(line)
    return stacked(rows, headers)


def measured_tables(result: TableResult) -> list[str]:
    """A measured table: ranking by MA, last and best epoch per cell, paired differences to CE."""
    out = []
    multi = len(result.blocks) > 1
    any_runs = False
    for bi, block in enumerate(result.blocks):
        name = f"{block.spec.label}: " if multi else ""
        order, unrun = ranked_rows(result, bi)
        ncol = len(block.spec.columns)
        if not order:
            out.append(f"*{name}no runs yet.*")
            continue
        any_runs = True
        stats: BlockStats = result.stats[bi]
        out.append(f"**{name}Ranking by MA** (mean over the {ncol} cells of the per-cell mean, last epoch; "
                   "best in bold; n = seeds with every cell):\n\n" + ranking_table(result, bi, order))
        out.append(f"**{name}Last epoch per cell** (the headline; mean ± std over seeds, n runs; best per column "
                   "in bold):\n\n" + per_cell_table(result, bi, order, "last"))
        out.append(f"**{name}Best epoch per cell** (test-set selected, as the paper most likely reports):\n\n"
                   + per_cell_table(result, bi, order, "best"))
        if stats.reference is not None and any(ri != stats.reference for ri in order):
            ref = result.rows[stats.reference].label
            out.append(f"**{name}Difference to {ref} per cell** (last epoch, method − {ref} on the same seed; "
                       "mean [95% CI]; ▲/▼: the interval excludes 0):\n\n" + delta_table(result, bi, order))
        if unrun:
            out.append(f"Not run yet: {', '.join(result.rows[ri].label for ri in unrun)}.")
    if any_runs:
        out.append(METHOD_NOTE)
    return out


# -- notes -------------------------------------------------------------------------------------
def notes(result: TableResult, ctx: RenderContext) -> list[str]:
    out: list[str] = []
    multi = len(result.blocks) > 1
    for bi, block in enumerate(result.blocks):
        for (ri, ci), cell in sorted(block.cells.items()):
            if not len(cell.runs):
                continue
            column = (f"{block.spec.label}: " if multi else "") + block.spec.columns[ci].label
            where = f"{result.rows[ri].label} · {column}"
            if cell.flag:
                done = cell.runs[cell.runs["status"] == "done"]
                out.append(
                    f"{FLAG} {where}: the runs disagree ({cell.flag}); split hashes "
                    + ", ".join(f"`{h[:8]}`" for h in cell.split_hashes) + ", config hashes "
                    + ", ".join(f"`{h[:8]}`" for h in cell.config_hashes)
                    + ". Left out of every mean. Runs: " + ", ".join(f"`{p}`" for p in sorted(done["path"])) + "."
                )
            for _, run in cell.runs[cell.runs["status"] == "failed"].sort_values("path").iterrows():
                known = pd.notna(run["failure_epoch"]) and run["failure_epoch"] >= 0  # -1: before training
                epoch = f" at epoch {int(run['failure_epoch'])}" if known else ""
                named = isinstance(run["failure_phase"], str) and run["failure_phase"] not in ("?", "")
                phase = f" of phase {run['failure_phase']}" if named and known else ""
                cause = run["failure_cause"] if isinstance(run["failure_cause"], str) else "no cause given"
                out.append(f"failed: {where}, seed {run['seed']}{epoch}{phase}: {cause} "
                           f"(`{run['path']}`); not averaged.")
            if cell.dirty:
                out.append(f"{DIRTY} {where}: {cell.dirty} run(s) from a dirty git tree.")
            if cell.unofficial:
                out.append(f"{UNOFFICIAL} {where}: {cell.unofficial} run(s) on unofficial data (split.official false).")
            if cell.mixed_hardware:
                out.append(f"{MIXED_HW} {where}: {mixed_hardware_note(cell.stacks)}")
    out += split_consistency(result, ctx.runs)
    if result.spec.paper and result.spec.paper in ctx.specs.paper:
        out += [f"Paper note: {n}" for n in ctx.specs.paper[result.spec.paper].notes]
    return out


def mixed_hardware_note(stacks: dict[str, tuple[int, ...]]) -> str:
    """What differs between a cell's stacks (labels from ``stack_label``), with the seeds on each."""
    parts = {label: label.split(" · ") for label in stacks}
    common = [p for p in next(iter(parts.values())) if all(p in other for other in parts.values())]
    each = "; ".join(" · ".join(p for p in parts[label] if p not in common)
                     + f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
                     for label, seeds in stacks.items())
    return (f"runs from {len(stacks)} hardware/software stacks" + (f" (all {' · '.join(common)})" if common else "")
            + f": {each}. They agree statistically, not bit for bit; averaged as usual.")


def render_table(result: TableResult, ctx: RenderContext) -> str:
    spec = result.spec
    parts = [f"## {spec.title}", "\n".join(header_lines(result, ctx))]
    if spec.measured:
        parts += measured_tables(result)
    elif spec.layout == "ma":
        parts.append(ma_table(result))
        for block in result.blocks:
            parts += cell_grids(result, block)
    else:
        parts.append(cells_table(result))
    note_lines = notes(result, ctx)
    if note_lines:
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in note_lines))
    return "\n\n".join(parts) + "\n"

