"""Bootstrap confidence intervals over seeds for the measured tables (``scipy.stats.bootstrap``).

* MA of a row: 95% percentile interval of the mean over cells of the per-cell mean, stratified by
  cell (seeds are resampled within each cell, independently across cells).
* Difference to CE, per cell: method − CE on the same seed (paired), resampled as pairs; per MA:
  the per-cell paired differences, stratified by cell as above.

Every interval uses its own ``np.random.default_rng(SEED)``, so an interval depends only on its data
(not on the order in which the report computes them) and the report regenerates byte-identically.
Last-epoch accuracy (the headline) only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

if TYPE_CHECKING:
    from leaderboard.aggregate import BlockResult, CellStats
    from leaderboard.spec import RowSpec

N_RESAMPLES = 10_000
CONFIDENCE = 0.95
METHOD = "percentile"
SEED = 0
METRIC = "top1_last"
REFERENCE = "ce"  # the method every row is compared with

METHOD_NOTE = (
    f"Intervals: {CONFIDENCE:.0%} percentile bootstrap over seeds (`scipy.stats.bootstrap`, method "
    f"'{METHOD}', {N_RESAMPLES:,} resamples, `rng=np.random.default_rng({SEED})` per interval, so the file "
    "regenerates byte-identically), on last-epoch accuracy. MA: stratified by cell (seeds resampled within each "
    "cell, cell means averaged). Δ to CE: method − CE on the same seed within a cell, the pairs resampled; the MA "
    "difference averages these per-cell paired differences, stratified by cell. ▲/▼: the interval lies entirely "
    "above/below 0. Small n: with 3 seeds a cell has only 10 distinct resamples, so a cell's interval is about the "
    "range of its 3 values (it excludes 0 only when all 3 paired differences share a sign), and percentile "
    "intervals under-cover at this n; read them as the spread of these seeds, not as a guarantee. BCa is not used: "
    "its jackknife acceleration is unstable at n = 3 and undefined when the seeds agree exactly. A cell or MA with "
    "fewer than 2 seeds (pairs) has no interval."
)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval; n = observations (seeds or pairs, summed over cells)."""

    estimate: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def marker(self) -> str:
        return "▲" if self.low > 0 else "▼" if self.high < 0 else ""


def _mean_of_means(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean([s.mean(axis=axis) for s in samples], axis=0)


def stratified_mean_ci(strata: Sequence[Sequence[float]]) -> Interval | None:
    """Mean over strata of each stratum's mean, with a bootstrap interval resampling within strata.

    None unless every stratum has at least 2 values. One stratum: the ordinary bootstrap of a mean.
    """
    data = tuple(np.asarray(s, dtype=float) for s in strata)
    if not data or any(len(s) < 2 for s in data):
        return None
    estimate = float(_mean_of_means(*data))
    if all(np.ptp(s) == 0 for s in data):  # identical seeds: every resample gives the estimate
        return Interval(estimate, estimate, estimate, sum(len(s) for s in data))
    res = sps.bootstrap(data, _mean_of_means, n_resamples=N_RESAMPLES, vectorized=True, paired=False,
                        confidence_level=CONFIDENCE, method=METHOD, rng=np.random.default_rng(SEED))
    ci = res.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), sum(len(s) for s in data))


def mean_ci(values: Sequence[float]) -> Interval | None:
    return stratified_mean_ci([values])


def seed_values(cell: CellStats, metric: str = METRIC) -> pd.Series:
    """Finished runs of a usable cell: seed -> value (mean over repeats of a seed); empty otherwise."""
    if not cell.usable:
        return pd.Series(dtype=float)
    done = cell.runs[cell.runs["status"] == "done"]
    return done.groupby("seed")[metric].mean().astype(float).sort_index()


def paired_differences(cell: CellStats, reference: CellStats, metric: str = METRIC) -> np.ndarray:
    """cell − reference on the seeds both have (sorted by seed)."""
    a, b = seed_values(cell, metric), seed_values(reference, metric)
    common = a.index.intersection(b.index).sort_values()
    return (a.loc[common] - b.loc[common]).to_numpy(dtype=float)


@dataclass
class BlockStats:
    """Intervals of one block: per row, and per (row, column) against the reference row."""

    reference: int | None  # row index of CE, None when the table has no CE row
    ma: dict[int, Interval | None] = field(default_factory=dict)
    ma_delta: dict[int, Interval | None] = field(default_factory=dict)
    cell: dict[tuple[int, int], Interval | None] = field(default_factory=dict)
    cell_delta: dict[tuple[int, int], Interval | None] = field(default_factory=dict)


def reference_row(rows: Sequence[RowSpec], method: str = REFERENCE) -> int | None:
    for i, row in enumerate(rows):
        if row.match == {"method": method}:
            return i
    return None


def block_stats(block: BlockResult, rows: Sequence[RowSpec]) -> BlockStats:
    ref = reference_row(rows)
    out = BlockStats(ref)
    n_cols = len(block.spec.columns)
    for ri, row in enumerate(rows):
        if row.reported_only:
            continue
        cells = [block.cells[(ri, ci)] for ci in range(n_cols)]
        values = [seed_values(c).to_numpy() for c in cells]
        for ci in range(n_cols):
            out.cell[(ri, ci)] = mean_ci(values[ci])
        out.ma[ri] = stratified_mean_ci(values) if block.ma[ri].complete else None
        if ref is None or ri == ref:
            continue
        diffs = [paired_differences(cells[ci], block.cells[(ref, ci)]) for ci in range(n_cols)]
        for ci in range(n_cols):
            out.cell_delta[(ri, ci)] = mean_ci(diffs[ci])
        complete = block.ma[ri].complete and block.ma[ref].complete
        out.ma_delta[ri] = stratified_mean_ci(diffs) if complete else None
    return out
