"""Runs -> table cells with pandas: selection by a table's ``where``, rows and columns by ``match``,
per-cell mean ± std over seeds, trust checks, and MA over a block's cells.

A cell is *flagged* (and left out of every mean) when its finished runs disagree on the split hash
or on the config hash (the config hash already leaves the seed out). Failed runs are counted, never
averaged. Runs from a dirty git tree or on unofficial data are counted so the cell can be marked, and
so are the hardware/software stacks of the finished runs (a cell mixing stacks is marked, not flagged:
runs agree statistically across machines, bit for bit only on one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from leaderboard.load import Runs, same_value
from leaderboard.spec import BlockSpec, ExtraSpec, RowSpec, Specs, TableSpec, paper_coordinates
from leaderboard.stats import BlockStats, block_stats


@dataclass
class CellStats:
    """The runs of one (row, column) cell."""

    runs: pd.DataFrame  # every run of the cell (done and failed)
    n_done: int = 0
    n_failed: int = 0
    seeds: tuple[int, ...] = ()
    best_mean: float | None = None
    best_std: float | None = None
    last_mean: float | None = None
    last_std: float | None = None
    flag: str | None = None  # why the cell is left out of the means
    dirty: int = 0  # finished runs from a dirty git tree
    unofficial: int = 0  # finished runs on unofficial data
    split_hashes: tuple[str, ...] = ()
    config_hashes: tuple[str, ...] = ()
    stacks: dict[str, tuple[int, ...]] = field(default_factory=dict)  # hardware label -> seeds of finished runs

    @property
    def usable(self) -> bool:
        return self.n_done > 0 and self.flag is None

    @property
    def mixed_hardware(self) -> bool:
        return len(self.stacks) > 1


@dataclass
class MAStats:
    """Mean accuracy over a block's cells for one row."""

    n_cells: int
    missing: int = 0  # cells without a usable mean (no run, only failed runs, or flagged)
    flagged: int = 0
    any_runs: bool = False
    best: float | None = None
    last: float | None = None
    best_std: float | None = None  # over seeds that have every cell
    last_std: float | None = None
    n_seeds: int = 0  # seeds that have every cell

    @property
    def complete(self) -> bool:
        return self.missing == 0


@dataclass
class ExtraStats:
    mean: float | None
    std: float | None
    n: int


@dataclass
class BlockResult:
    spec: BlockSpec
    runs: pd.DataFrame  # the block's runs that landed in a cell, with `row` and `col` positions
    cells: dict[tuple[int, int], CellStats]
    ma: dict[int, MAStats]
    extras: dict[tuple[int, int], ExtraStats]
    unplaced: int  # runs matching `where` but no row or column


@dataclass
class TableResult:
    spec: TableSpec
    rows: list[RowSpec]
    blocks: list[BlockResult]
    paper: dict[tuple[int, int, int | None], float] = field(default_factory=dict)  # (block, row, col) -> value
    extras_paper: dict[tuple[int, int, int], float] = field(default_factory=dict)  # (block, row, extra) -> value
    stats: list[BlockStats] = field(default_factory=list)  # per block; measured tables only

    @property
    def runs(self) -> pd.DataFrame:
        frames = [b.runs for b in self.blocks if len(b.runs)]
        return pd.concat(frames).drop_duplicates("path") if frames else pd.DataFrame(columns=["path"])

    def paper_value(self, block: int, row: int, col: int | None) -> float | None:
        return self.paper.get((block, row, col))


def _std(values: pd.Series) -> float | None:
    return float(values.std(ddof=1)) if len(values) > 1 else None


def cell_stats(runs: pd.DataFrame) -> CellStats:
    """Mean ± sample std of best- and last-epoch accuracy over the finished runs, with trust checks."""
    if not len(runs):
        return CellStats(runs=runs)
    done = runs[runs["status"] == "done"]
    stats = CellStats(runs=runs, n_done=len(done), n_failed=int((runs["status"] == "failed").sum()),
                      seeds=tuple(sorted(int(s) for s in done["seed"])), dirty=int(done["git_dirty"].sum()),
                      unofficial=int((~done["official"].astype(bool)).sum()),
                      split_hashes=tuple(sorted(done["split_sha256"].unique())),
                      config_hashes=tuple(sorted(done["config_hash"].unique())),
                      stacks={str(label): tuple(sorted(int(s) for s in group["seed"]))
                              for label, group in done.groupby("hardware", sort=True)})
    reasons = []
    if len(stats.split_hashes) > 1:
        reasons.append(f"{len(stats.split_hashes)} split hashes")
    if len(stats.config_hashes) > 1:
        reasons.append(f"{len(stats.config_hashes)} config hashes")
    stats.flag = " and ".join(reasons) or None
    if stats.n_done and stats.flag is None:
        stats.best_mean, stats.best_std = float(done["top1_best"].mean()), _std(done["top1_best"])
        stats.last_mean, stats.last_std = float(done["top1_last"].mean()), _std(done["top1_last"])
    return stats


def ma_stats(cells: list[CellStats]) -> MAStats:
    """MA = unweighted mean of the cell means, only when every cell has a usable mean.

    Its std is over the seeds that have a finished run in every cell (per-seed MA, ddof 1).
    """
    ma = MAStats(n_cells=len(cells), missing=sum(not c.usable for c in cells),
                 flagged=sum(c.flag is not None for c in cells), any_runs=any(len(c.runs) for c in cells))
    if not cells or not ma.complete:
        return ma
    ma.best = float(np.mean([c.best_mean for c in cells]))
    ma.last = float(np.mean([c.last_mean for c in cells]))
    per_cell = [c.runs[c.runs["status"] == "done"].groupby("seed")[["top1_best", "top1_last"]].mean() for c in cells]
    seeds = sorted(set.intersection(*(set(p.index) for p in per_cell)))
    ma.n_seeds = len(seeds)
    if len(seeds) > 1:
        per_seed = sum(p.loc[seeds] for p in per_cell) / len(cells)
        ma.best_std, ma.last_std = _std(per_seed["top1_best"]), _std(per_seed["top1_last"])
    return ma


def table_rows(table: TableSpec, specs: Specs, runs: Runs) -> list[RowSpec]:
    """The table's rows; ``rows: methods`` gives the known methods plus any other method in the runs."""
    if table.rows is not None:
        return list(table.rows)
    methods = list(specs.methods)
    for block in table.blocks:
        for m in sorted(runs.frame.loc[_where_mask(runs, block.where), "method"].unique()):
            if m not in methods:
                methods.append(m)
    return [RowSpec(specs.method_label(m), {"method": m}, table.paper_rows.get(m)) for m in methods]


def _where_mask(runs: Runs, where: Mapping[str, Any]) -> pd.Series:
    mask = pd.Series(True, index=runs.frame.index)
    for key, wanted in where.items():
        if not mask.any():
            break
        mask &= runs.values(key).map(lambda v, w=wanted: same_value(v, w)).astype(bool)
    return mask


def _first_match(runs: Runs, index: pd.Index, matches: list[Mapping[str, Any] | None]) -> pd.Series:
    """Position of the first ``match`` each run satisfies (-1: none)."""
    pos = pd.Series(-1, index=index)
    values = {k: runs.values(k, index) for m in matches if m for k in m}
    for i, m in enumerate(matches):
        if m is None:
            continue
        ok = pos == -1
        for key, wanted in m.items():
            ok &= values[key].map(lambda v, w=wanted: same_value(v, w)).astype(bool)
        pos[ok] = i
    return pos


def extra_value(record: Mapping[str, Any], extra: ExtraSpec) -> float | None:
    """One run's value of an extra (see ExtraSpec)."""
    if extra.value.startswith("per_epoch:"):
        key = extra.value.split(":", 1)[1]
        epochs = (record.get("diagnostics") or {}).get("per_epoch") or []
        vals = [float(e[key]) for e in epochs if isinstance(e, Mapping) and isinstance(e.get(key), (int, float))]
        return float(np.mean(vals)) if vals else None
    node: Any = record
    for part in extra.value.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def build_block(block: BlockSpec, rows: list[RowSpec], runs: Runs) -> BlockResult:
    sel = runs.frame[_where_mask(runs, block.where)].copy()
    sel["row"] = _first_match(runs, sel.index, [r.match for r in rows])
    sel["col"] = _first_match(runs, sel.index, [c.match for c in block.columns])
    placed = sel[(sel["row"] >= 0) & (sel["col"] >= 0)]
    groups = {key: g for key, g in placed.groupby(["row", "col"])}
    empty = placed.iloc[0:0]
    cells = {(r, c): cell_stats(groups.get((r, c), empty))
             for r in range(len(rows)) for c in range(len(block.columns))}
    ma = {r: ma_stats([cells[(r, c)] for c in range(len(block.columns))]) for r in range(len(rows))}
    extras: dict[tuple[int, int], ExtraStats] = {}
    for e, extra in enumerate(block.extras):
        for r in range(len(rows)):
            usable = [cells[(r, c)] for c in range(len(block.columns)) if cells[(r, c)].usable]
            paths = [p for cell in usable for p in cell.runs.loc[cell.runs["status"] == "done", "path"]]
            vals = pd.Series([v for p in paths if (v := extra_value(runs.record(p), extra)) is not None], dtype=float)
            extras[(r, e)] = ExtraStats(float(vals.mean()) if len(vals) else None, _std(vals), len(vals))
    return BlockResult(block, placed, cells, ma, extras, unplaced=len(sel) - len(placed))


def build_table(table: TableSpec, specs: Specs, runs: Runs) -> TableResult:
    rows = table_rows(table, specs, runs)
    blocks = [build_block(b, rows, runs) for b in table.blocks]
    result = TableResult(table, rows, blocks)
    if table.measured:
        result.stats = [block_stats(b, rows) for b in blocks]
    ptab = specs.paper.get(table.paper) if table.paper else None
    if ptab is not None:
        for bi, block in enumerate(table.blocks):
            for ri, row in enumerate(rows):
                slots: list[int | None] = [None] + list(range(len(block.columns)))
                for ci in slots:
                    col = block.columns[ci] if ci is not None else None
                    value = ptab.value(*paper_coordinates(table, row, block, col))
                    if value is not None:
                        result.paper[(bi, ri, ci)] = value
                for ei, extra in enumerate(block.extras):
                    value = ptab.value(extra.paper_row, row.paper_col or block.paper_col)
                    if value is not None:
                        result.extras_paper[(bi, ri, ei)] = value
    return result


def build_tables(specs: Specs, runs: Runs) -> list[TableResult]:
    return [build_table(t, specs, runs) for t in specs.tables]


def split_consistency(result: TableResult, runs: Runs) -> list[str]:
    """Finished runs of one split spec across a table's rows should share one split hash."""
    notes = []
    done = result.runs
    if not len(done):
        return notes
    done = done[done["status"] == "done"]
    specs = done["path"].map(lambda p: _spec_key(runs.record(p)))
    for key, group in done.groupby(specs):
        hashes = sorted(group["split_sha256"].unique())
        if len(hashes) > 1:
            notes.append(f"runs of the same split spec ({key}) have {len(hashes)} split hashes: "
                         + ", ".join(f"`{h[:8]}`" for h in hashes) + " (different data files?)")
    return notes


def _spec_key(record: Mapping[str, Any]) -> str:
    spec = record["split"].get("spec") or {}
    return ", ".join(f"{k}={spec[k]}" for k in sorted(spec))
