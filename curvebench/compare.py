"""Are two results trees bit-identical in what training produced?

    python -m curvebench.compare RESULTS_A RESULTS_B

Runs are matched by their path under each root (run directories are a function of the config). For
each run it compares, exactly:

- ``result.json`` without what describes the occasion rather than the training: ``started``,
  ``finished``, ``wall_time_s``, ``env`` (host, git sha), ``run_id`` and ``config.paths`` (the roots),
  and timings (``elapsed_s``, ``time_*`` diagnostics);
- ``history.json`` without ``elapsed_s``;
- ``model.pt``: every tensor of every evaluated network, bit for bit (``torch.equal``, and the dtype);
- ``artifacts.npz`` when present: every array.

Exit status 0 when both trees hold the same runs and each is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from curvebench.engine.rundir import ARTIFACTS_FILE, HISTORY_FILE, MODEL_FILE, RESULT_FILE, RunDir

OCCASION_KEYS = {"started", "finished", "wall_time_s", "env", "run_id", "elapsed_s"}


def _training_part(obj: Any, top: bool = True) -> Any:
    """``obj`` without the keys that describe when, where and how fast it ran."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in OCCASION_KEYS or str(k).startswith("time_"):
                continue
            if top and k == "config" and isinstance(v, dict):
                v = {ck: cv for ck, cv in v.items() if ck != "paths"}
            out[k] = _training_part(v, top=False)
        return out
    if isinstance(obj, list):
        return [_training_part(v, top=False) for v in obj]
    return obj


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{where or '.'}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{where}.{k}: only in {'B' if k not in a else 'A'}"
            diff = _first_difference(a[k], b[k], f"{where}.{k}")
            if diff:
                return diff
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            diff = _first_difference(x, y, f"{where}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def _compare_models(a: Path, b: Path) -> tuple[int, str | None]:
    import torch

    ma, mb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    if set(ma) != set(mb):
        return 0, f"{MODEL_FILE}: networks {sorted(ma)} vs {sorted(mb)}"
    n = 0
    for net in sorted(ma):
        if list(ma[net]) != list(mb[net]):
            return n, f"{MODEL_FILE}[{net}]: different tensors"
        for key in ma[net]:
            ta, tb = ma[net][key], mb[net][key]
            if ta.dtype != tb.dtype or ta.shape != tb.shape or not torch.equal(ta, tb):
                return n, f"{MODEL_FILE}[{net}][{key}] differs"
            n += 1
    return n, None


def _compare_arrays(a: Path, b: Path) -> tuple[int, str | None]:
    import numpy as np

    with np.load(a) as xa, np.load(b) as xb:
        if set(xa.files) != set(xb.files):
            return 0, f"{ARTIFACTS_FILE}: {sorted(xa.files)} vs {sorted(xb.files)}"
        for k in xa.files:
            if xa[k].dtype != xb[k].dtype or not np.array_equal(xa[k], xb[k]):
                return 0, f"{ARTIFACTS_FILE}[{k}] differs"
        return len(xa.files), None


def compare_run(a: Path, b: Path) -> tuple[str, str]:
    """(``identical`` or ``DIFFERENT``, what was compared or the first difference) for run dirs ``a``, ``b``."""
    da, db = RunDir(a), RunDir(b)
    ra, rb = (_training_part(json.loads(d.result.read_text())) for d in (da, db))
    diff = _first_difference(ra, rb, RESULT_FILE)
    if diff:
        return "DIFFERENT", diff
    ha, hb = (_training_part(json.loads(d.history.read_text())) for d in (da, db))
    diff = _first_difference(ha, hb, HISTORY_FILE)
    if diff:
        return "DIFFERENT", diff
    tensors, diff = _compare_models(da.model, db.model)
    if diff:
        return "DIFFERENT", diff
    arrays = 0
    if da.artifacts.exists() or db.artifacts.exists():
        if not (da.artifacts.exists() and db.artifacts.exists()):
            return "DIFFERENT", f"{ARTIFACTS_FILE} in only one of them"
        arrays, diff = _compare_arrays(da.artifacts, db.artifacts)
        if diff:
            return "DIFFERENT", diff
    m = ra["metrics"]
    what = (f"top1 last {m['top1_last']} best {m['top1_best']}, {m['epochs']} epochs, {len(ha)} history entries, "
            f"{tensors} weight tensors" + (f", {arrays} artifact arrays" if arrays else ""))
    return "identical", what


def compare_trees(root_a: Path, root_b: Path) -> tuple[list[tuple[str, str, str]], bool]:
    """Rows (run, verdict, detail) for every finished run under either root, and whether all are identical."""
    runs_a = {p.parent.relative_to(root_a) for p in Path(root_a).rglob(RESULT_FILE)}
    runs_b = {p.parent.relative_to(root_b) for p in Path(root_b).rglob(RESULT_FILE)}
    rows = []
    for rel in sorted(runs_a | runs_b):
        if rel not in runs_a or rel not in runs_b:
            rows.append((str(rel), "MISSING", f"finished only under {root_a if rel in runs_a else root_b}"))
            continue
        verdict, detail = compare_run(Path(root_a) / rel, Path(root_b) / rel)
        rows.append((str(rel), verdict, detail))
    return rows, bool(rows) and all(v == "identical" for _, v, _ in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m curvebench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="a results root (e.g. the runs trained here)")
    p.add_argument("b", type=Path, help="another results root (e.g. the same runs trained through SLURM)")
    args = p.parse_args(argv)
    for root in (args.a, args.b):
        if not root.is_dir():
            print(f"python -m curvebench.compare: error: {root} is not a directory", file=sys.stderr)
            return 2
    rows, ok = compare_trees(args.a, args.b)
    for rel, verdict, detail in rows:
        print(f"{verdict:<9} {rel}\n          {detail}")
    n_same = sum(v == "identical" for _, v, _ in rows)
    print(f"{n_same}/{len(rows)} runs bit-identical between {args.a} and {args.b}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
