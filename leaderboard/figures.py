"""Leaderboard figures (matplotlib, Agg): the paper's Fig. 1, 5 and 6, and an MA bar chart per dataset.

Inputs that are missing or malformed skip the figure with a note; nothing here stops the report.

CurveNet's run artifacts
------------------------
Figures 1 and 5 read ``artifacts.npz`` beside a CurveNet run's ``result.json`` (what
``Method.artifacts()`` returns). The arrays, all in the order of the run's training set
(``split.train_indices``):

``labels``    int64   [n]     observed (possibly noisy) training labels
``is_noisy``  bool    [n]     observed label != true label (diagnostics only, never used in training)
``curves``    float32 [n, T]  probe-stage training loss of each sample at each of the T probe epochs,
                              raw: before the first S values are removed and before normalisation
``weights``   float32 [n]     CurveNet's per-sample weights at freeze time (the weights it keeps
                              after the first LR decay)

Fig. 1 needs ``curves``, ``labels``, ``is_noisy``; Fig. 5 needs ``weights``, ``labels``, ``is_noisy``.
Fig. 6 needs ``metrics.confusion_last`` ([K, K] counts, rows = true class) of CE and CurveNet runs
on the same split.

Scopes: each measured table (``measured: true`` in tables.yaml, e.g. Fashion-MNIST, digits) gets its
own Fig. 1, 5 and 6 from its own runs (files ``fig1_loss_curves_<table>.png``, ...); the paper's
figures (``fig1_loss_curves.png``, ...) come from the runs of no measured table (CIFAR, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from curvebench.engine.rundir import ARTIFACTS_FILE  # noqa: E402
from leaderboard.aggregate import TableResult  # noqa: E402
from leaderboard.load import Runs  # noqa: E402

FIG1_ARRAYS = ("curves", "labels", "is_noisy")
FIG5_ARRAYS = ("weights", "labels", "is_noisy")
FIGURE_PREFIXES = ("fig1_", "fig5_", "fig6_", "ma_")
DPI = 100
CLEAN, NOISY = "tab:blue", "tab:orange"
# Preferred settings (dataset, IF, p): the paper's Fig. 5 and Fig. 6 settings first.
FIG15_PREFERENCE = (("cifar10", 20, 0.4), ("cifar100", 20, 0.4), ("cifar10", 20, 0.2))
FIG6_PREFERENCE = (("cifar100", 20, 0.6), ("cifar10", 20, 0.4), ("cifar100", 20, 0.4))


class SkipFigure(Exception):
    """The figure's inputs are missing; the message says which."""


@dataclass
class Figure:
    key: str
    title: str
    file: str  # path relative to the markdown
    caption: str
    scope: str | None = None  # the measured table the figure belongs to; None: the paper's figures


@dataclass
class Figures:
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _setting(row: pd.Series) -> str:
    return f"{row['dataset']}, IF {row['imbalance_factor']:g}, {row['noise_model']} p {row['noise_rate']:g}"


def _rank(row: pd.Series, preference: Sequence[tuple[str, float, float]]) -> tuple[Any, ...]:
    for i, (ds, imb, p) in enumerate(preference):
        if row["dataset"] == ds and np.isclose(row["imbalance_factor"], imb) and np.isclose(row["noise_rate"], p):
            return (i,)
    # otherwise: official data first, then the most imbalanced and noisiest setting
    return (len(preference), not row["official"], -row["imbalance_factor"], -row["noise_rate"], row["dataset"])


def load_artifacts(runs: Runs, path: str, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named arrays of a run's artifacts.npz, checked for shape; SkipFigure if unusable."""
    file = runs.root / Path(path).parent / ARTIFACTS_FILE
    try:
        with np.load(file, allow_pickle=False) as z:
            missing = [n for n in names if n not in z.files]
            if missing:
                raise SkipFigure(f"`{file.relative_to(runs.root).as_posix()}` lacks {', '.join(missing)}")
            arrays = {n: np.asarray(z[n]) for n in names}
    except (OSError, ValueError) as err:
        raise SkipFigure(f"cannot read {file.relative_to(runs.root).as_posix()}: {err}") from None
    n = len(arrays["labels"])
    for name, arr in arrays.items():
        want = 2 if name == "curves" else 1
        if arr.ndim != want or len(arr) != n:
            shape = f"[{n}, T]" if want == 2 else f"[{n}]"
            raise SkipFigure(f"`{name}` in {ARTIFACTS_FILE} has shape {arr.shape}; expected {shape}")
    arrays["labels"] = arrays["labels"].astype(np.int64)
    arrays["is_noisy"] = arrays["is_noisy"].astype(bool)
    return arrays


def pick_artifact_run(runs: Runs, names: Sequence[str]) -> tuple[pd.Series, dict[str, np.ndarray]]:
    """The preferred finished CurveNet run whose artifacts hold ``names``."""
    df = runs.frame
    cands = df[(df["method"] == "curvenet") & (df["status"] == "done")]
    cands = cands[cands["path"].map(lambda p: (runs.root / Path(p).parent / ARTIFACTS_FILE).is_file())]
    if not len(cands):
        raise SkipFigure(f"no finished CurveNet run has an {ARTIFACTS_FILE} (with {', '.join(names)})")
    order = sorted(cands.index, key=lambda i: (_rank(cands.loc[i], FIG15_PREFERENCE), cands.loc[i, "seed"],
                                               cands.loc[i, "path"]))
    reasons = []
    for i in order:
        try:
            return cands.loc[i], load_artifacts(runs, cands.loc[i, "path"], names)
        except SkipFigure as err:
            reasons.append(str(err))
    raise SkipFigure("; ".join(reasons))


def _save(fig: plt.Figure, out_dir: Path, name: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / name, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return name


def fig1_loss_curves(runs: Runs, out_dir: Path, suffix: str = "") -> tuple[str, str]:
    """Mean ± std probe loss of clean and noisy samples, for a head and a tail class."""
    run, a = pick_artifact_run(runs, FIG1_ARRAYS)
    labels, noisy, curves = a["labels"], a["is_noisy"], a["curves"].astype(float)
    counts = np.bincount(labels)
    mixed = [c for c in range(len(counts)) if (noisy[labels == c]).any() and (~noisy[labels == c]).any()]
    if not mixed:
        raise SkipFigure("no class has both clean and noisy samples")
    head = max(mixed, key=lambda c: (counts[c], -c))
    tail = min(mixed, key=lambda c: (counts[c], c))
    classes = [("head", head)] + ([("tail", tail)] if tail != head else [])
    fig, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 3.6), squeeze=False)
    epochs = np.arange(1, curves.shape[1] + 1)
    for ax, (kind, c) in zip(axes[0], classes):
        for is_noisy, color, name in ((False, CLEAN, "clean"), (True, NOISY, "noisy")):
            sel = curves[(labels == c) & (noisy == is_noisy)]
            mean, std = sel.mean(0), sel.std(0)
            ax.plot(epochs, mean, color=color, label=f"{name} (n={len(sel)})")
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
        ax.set_title(f"{kind} class {c} ({counts[c]} samples)")
        ax.set_xlabel("probe epoch")
        ax.set_ylabel("training loss")
        ax.legend(frameon=False)
    fig.suptitle(f"Loss curves, CurveNet probe: {_setting(run)}, seed {run['seed']}")
    fig.tight_layout()
    name = _save(fig, out_dir, f"fig1_loss_curves{suffix}.png")
    return name, (f"Fig. 1: mean ± std probe-stage training loss of clean and noisy samples of the largest (head) "
                  f"and smallest (tail) observed class that has both, from `{run['path']}` ({_setting(run)}).")


def fig5_weights(runs: Runs, out_dir: Path, suffix: str = "") -> tuple[str, str]:
    """CurveNet's weights of clean and noisy samples, per observed class (head to tail)."""
    run, a = pick_artifact_run(runs, FIG5_ARRAYS)
    labels, noisy, weights = a["labels"], a["is_noisy"], a["weights"].astype(float)
    counts = np.bincount(labels)
    classes = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(classes) + 2), 3.8))
    for offset, is_noisy, color in ((-0.2, False, CLEAN), (0.2, True, NOISY)):
        data = [weights[(labels == c) & (noisy == is_noisy)] for c in classes]
        pos = [i + offset for i, d in enumerate(data) if len(d)]
        data = [d for d in data if len(d)]
        if data:
            box = ax.boxplot(data, positions=pos, widths=0.35, showfliers=False, patch_artist=True,
                             medianprops={"color": "black"})
            for patch in box["boxes"]:
                patch.set_facecolor(color)
                patch.set_alpha(0.6)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels([f"{c}\n({counts[c]})" for c in classes], fontsize=8 if len(classes) <= 20 else 5)
    ax.set_xlabel("observed class (training samples), head to tail")
    ax.set_ylabel("sample weight")
    patches = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.6) for c in (CLEAN, NOISY)]
    ax.legend(patches, ["clean", "noisy"], frameon=False)
    ax.set_title(f"CurveNet weights: {_setting(run)}, seed {run['seed']}")
    fig.tight_layout()
    name = _save(fig, out_dir, f"fig5_weights{suffix}.png")
    return name, (f"Fig. 5: CurveNet's per-sample weights at freeze time for clean and noisy samples of each class, "
                  f"from `{run['path']}` ({_setting(run)}; the paper shows CIFAR-10, IF 20, p 0.4).")


def _confusion(runs: Runs, paths: Sequence[str]) -> np.ndarray | None:
    total = None
    for p in paths:
        m = runs.record(p).get("metrics", {}).get("confusion_last")
        arr = np.asarray(m, dtype=float) if m else None
        if arr is None or arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            return None
        total = arr if total is None else (total + arr if total.shape == arr.shape else None)
        if total is None:
            return None
    return total


def fig6_confusion(runs: Runs, out_dir: Path, suffix: str = "") -> tuple[str, str]:
    """Row-normalised confusion matrices of CE and CurveNet on one split, summed over seeds."""
    df = runs.frame[(runs.frame["status"] == "done") & runs.frame["method"].isin(["ce", "curvenet"])]
    if not len(df):
        raise SkipFigure("no finished CE or CurveNet run")
    keys = []
    for (split, model), g in df.groupby(["split_sha256", "model"]):
        if set(g["method"]) == {"ce", "curvenet"}:
            keys.append((_rank(g.iloc[0], FIG6_PREFERENCE), split, model))
    if not keys:
        raise SkipFigure("no split has finished runs of both CE and CurveNet")
    for _, split, model in sorted(keys):
        g = df[(df["split_sha256"] == split) & (df["model"] == model)]
        mats = {m: _confusion(runs, sorted(g.loc[g["method"] == m, "path"])) for m in ("ce", "curvenet")}
        if all(v is not None for v in mats.values()) and mats["ce"].shape == mats["curvenet"].shape:
            break
    else:
        raise SkipFigure("the CE and CurveNet runs that share a split lack `metrics.confusion_last`")
    k = mats["ce"].shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, (method, title) in zip(axes, (("ce", "CE"), ("curvenet", "CurveNet"))):
        conf = mats[method]
        norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        n = int((g["method"] == method).sum())
        acc = 100 * np.trace(conf) / max(conf.sum(), 1)
        ax.set_title(f"{title}: {acc:.1f}% ({n} seed{'s' if n > 1 else ''})")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ticks = range(k) if k <= 20 else []
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
    fig.colorbar(im, ax=list(axes), fraction=0.03)
    run = g.iloc[0]
    fig.suptitle(f"Confusion matrices: {_setting(run)}, {model}")
    name = _save(fig, out_dir, f"fig6_confusion{suffix}.png")
    return name, (f"Fig. 6: confusion matrices (rows: true class, row-normalised; last epoch, counts summed over "
                  f"seeds) of CE and CurveNet on {_setting(run)}, split `{split[:8]}` (the paper shows CIFAR-100, "
                  "IF 20, p 0.6).")


def ma_charts(tables: Sequence[TableResult], out_dir: Path) -> tuple[list[Figure], list[str]]:
    """One bar chart per MA block of the tables with ``ma_chart``: best and last MA per row, paper MA."""
    figs, notes = [], []
    for t in tables:
        if not t.spec.ma_chart:
            continue
        for bi, block in enumerate(t.blocks):
            what = f"MA chart for {t.spec.id} {block.spec.label}"
            rows = [(ri, r) for ri, r in enumerate(t.rows) if not r.reported_only and block.ma[ri].complete
                    and block.ma[ri].any_runs]
            if not rows:
                notes.append(f"{what} skipped: no row has a finished run in every cell yet.")
                continue
            if t.spec.measured:  # ranked as in the table
                rows.sort(key=lambda r: -block.ma[r[0]].last)
            try:
                name = f"ma_{t.spec.id}_{bi}_{block.spec.label.lower().replace(' ', '_').replace(',', '')}.png"
                bottom = _ma_chart(t, bi, rows, out_dir, name)
            except Exception as err:  # noqa: BLE001 - a figure never stops the report
                notes.append(f"{what} failed: {type(err).__name__}: {err}")
                continue
            short = t.spec.title.split(":")[0]
            axis = (f"the y axis starts at {bottom:g}%, not 0 (cut, marked by the break on the axis)" if bottom > 0
                    else "the y axis starts at 0")
            paper = "; black ticks: the paper's MA" if t.paper else ""
            figs.append(Figure(name[:-4], f"MA per method: {short}, {block.spec.label}", name,
                               f"MA per method on the {block.spec.label} grid of {short} (best and last epoch, "
                               f"± std over seeds with every cell{paper}); {axis}.",
                               t.spec.id if t.spec.measured else None))
    return figs, notes


def _axis_bottom(lows: Sequence[float]) -> float:
    """0, unless every value is above 40%: then a multiple of 10 at least 10 points below the lowest."""
    low = min(lows)
    return 0.0 if low < 40 else float(10 * np.floor((low - 10) / 10))


def _mark_cut(ax: plt.Axes, bottom: float) -> None:
    """A break mark (//) on the y axis near its bottom, and the cut named in the axis label."""
    kw = dict(transform=ax.transAxes, color="black", clip_on=False, linewidth=1)
    for dy in (0.0, 0.025):
        ax.plot([-0.015, 0.015], [0.015 + dy, 0.04 + dy], **kw)
    ax.set_ylabel(f"MA (%), axis cut at {bottom:g}")


def _ma_chart(t: TableResult, bi: int, rows: list[tuple[int, Any]], out_dir: Path, name: str) -> float:
    """Draw the chart; returns where its y axis starts (0 or a marked cut)."""
    block = t.blocks[bi]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(rows) + 2), 3.6))
    for off, attr, label, color in ((-0.2, "best", "best epoch", "tab:blue"), (0.2, "last", "last epoch", "tab:gray")):
        vals = [getattr(block.ma[ri], attr) for ri, _ in rows]
        errs = [getattr(block.ma[ri], f"{attr}_std") or 0.0 for ri, _ in rows]
        ax.bar(x + off, vals, width=0.4, yerr=errs, capsize=2, color=color, label=label)
    paper = [(i, t.paper_value(bi, ri, None)) for i, (ri, _) in enumerate(rows)]
    for n, (i, p) in enumerate([(i, p) for i, p in paper if p is not None]):
        ax.plot([i - 0.4, i + 0.4], [p, p], color="black", linewidth=2, label="paper" if n == 0 else None)
    lows = [min(block.ma[ri].best, block.ma[ri].last) for ri, _ in rows]
    lows += [p for _, p in paper if p is not None]
    bottom = _axis_bottom(lows)
    ax.set_ylim(bottom, 100)
    ax.set_xticks(x)
    ax.set_xticklabels([r.label for _, r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("MA (%)")
    if bottom > 0:
        _mark_cut(ax, bottom)
    ax.set_title(f"{t.spec.title.split(':')[0]}: MA on the {block.spec.label} grid")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, out_dir, name)
    return bottom


PAPER_FIGURES: tuple[tuple[str, str, Callable[[Runs, Path], tuple[str, str]]], ...] = (
    ("fig1", "Fig. 1: loss curves of clean and noisy samples", fig1_loss_curves),
    ("fig5", "Fig. 5: CurveNet weights per class", fig5_weights),
    ("fig6", "Fig. 6: confusion matrices of CE and CurveNet", fig6_confusion),
)


def make_figures(runs: Runs, tables: Sequence[TableResult], out_dir: Path, rel: str) -> Figures:
    """Draw every figure into ``out_dir``; ``rel`` is out_dir relative to the markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        if old.name.startswith(FIGURE_PREFIXES):
            old.unlink()
    result = Figures()
    figs, notes = ma_charts(tables, out_dir)
    result.figures += [Figure(f.key, f.title, f"{rel}/{f.file}", f.caption, f.scope) for f in figs]
    result.notes += notes
    measured = [t for t in tables if t.spec.measured]
    in_measured = {p for t in measured for p in t.runs["path"]}
    for t in measured:
        short = t.spec.title.split(":")[0]
        sub = subset(runs, set(t.runs["path"]))
        if not (sub.frame["status"] == "done").any():
            result.notes.append(f"Fig. 1, 5 and 6 of {short} skipped: no finished run yet.")
            continue
        _paper_figures(result, sub, out_dir, rel, f"_{t.spec.id}", short, t.spec.id)
    rest = subset(runs, set(runs.frame["path"]) - in_measured)
    _paper_figures(result, rest, out_dir, rel, "", None, None)
    return result


def subset(runs: Runs, paths: set[str]) -> Runs:
    """The runs whose path is in ``paths`` (records shared, not copied)."""
    return Runs(runs.root, runs.frame[runs.frame["path"].isin(paths)], runs.records, [])


def _paper_figures(result: Figures, runs: Runs, out_dir: Path, rel: str, suffix: str, label: str | None,
                   scope: str | None) -> None:
    for key, title, fn in PAPER_FIGURES:
        if label is not None:
            title = title.replace(":", f" ({label}):", 1)
        try:
            name, caption = fn(runs, out_dir, suffix)
        except SkipFigure as err:
            result.notes.append(f"{title} skipped: {err}.")
            continue
        except Exception as err:  # noqa: BLE001 - a figure never stops the report
            plt.close("all")
            result.notes.append(f"{title} failed: {type(err).__name__}: {err}.")
            continue
        result.figures.append(Figure(key, title, f"{rel}/{name}", caption, scope))
