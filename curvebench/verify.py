"""``curvebench verify RESULTS_DIR [--sample N]``: re-train recorded runs here and compare.

Each sampled run is planned from the config in its record (only the paths change: a scratch
directory for splits and results, this machine's data root), its split is made afresh and must
have the recorded split hash, and it is trained from scratch. RESULTS_DIR is only read.

Verdicts, per run:

- **bit-identical**: the same accuracy at every epoch, the same last and best accuracy, best
  epoch, per-class accuracies and confusion matrix (and the same for extra networks), exactly;
- **within spread**: otherwise, when ``|Δ last| <= tolerance``. Δ last is the re-run's minus the
  recorded last-epoch top-1 (percent). The tolerance is the cell's seed spread, as a 95% bound on
  the difference of two runs of the cell: ``t(0.975, m−1) · √2 · s``, with s the sample std
  (ddof 1) of the recorded last-epoch top-1 over the cell's m *other* seeds (the run's own record
  is left out, so a wrong record cannot widen its own tolerance), and s at least that of two seeds
  one test image apart (the accuracy's resolution, 100 / test images: tied seeds are common). A cell is what the leaderboard averages: the finished records under
  RESULTS_DIR with the run's config hash and split hash, i.e. the runs that differ only by seed.
  If the re-run were an independent draw from the cell's runs, it would fall outside with
  probability 5%; a re-run of the same seed stays closer than that. With 3 seeds (m = 2) the bound
  is 12.7 times the other two seeds' difference (at least one test image): only gross disagreement
  is outside; more seeds make it sharper. A cell of fewer than 3 seeds has no spread: its
  tolerance is one test image;
- **outside spread**: ``|Δ last|`` above the tolerance;
- **split differs**, **config differs** (the record's config does not hash to its config hash),
  **failed** (the re-run wrote failed.json) or **error**: not verified.

The sample is deterministic: the N finished records whose path (relative to RESULTS_DIR) has the
smallest sha256, i.e. a fixed pseudo-random choice, the same on every machine. Exit status 0 when
every sampled run is bit-identical or within its spread, 1 otherwise, 2 for bad input.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

BIT_IDENTICAL = "bit-identical"
WITHIN = "within spread"
OUTSIDE = "outside spread"
SPLIT_DIFFERS = "split differs"
CONFIG_DIFFERS = "config differs"
FAILED = "failed"
ERROR = "error"
PASSING = (BIT_IDENTICAL, WITHIN)
CONFIDENCE = 0.95  # two-sided level of the seed-spread bound
# metrics compared for bit-identity
EXACT_METRICS = ("top1_per_epoch", "top1_last", "top1_best", "best_epoch", "epochs", "per_class_last",
                 "confusion_last", "extra_models")


class VerifyInputError(ValueError):
    """RESULTS_DIR or an option is unusable (exit 2)."""


@dataclass
class Check:
    """One sampled run: what was recorded, what came out here, and the verdict."""

    path: str  # relative to RESULTS_DIR
    record: dict[str, Any]
    verdict: str = ERROR
    detail: str = ""
    here: dict[str, Any] | None = None  # the re-run's record
    other_lasts: list[float] = field(default_factory=list)  # recorded last-epoch top-1 of the cell's other seeds
    tolerance: float | None = None

    @property
    def delta_last(self) -> float | None:
        if self.here is None:
            return None
        return float(self.here["metrics"]["top1_last"]) - float(self.record["metrics"]["top1_last"])

    @property
    def first_diff_epoch(self) -> int | None:
        """0-based epoch of the final phase where the accuracies first differ; None: none differ."""
        if self.here is None:
            return None
        a, b = self.record["metrics"]["top1_per_epoch"], self.here["metrics"]["top1_per_epoch"]
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return i
        return None if len(a) == len(b) else min(len(a), len(b))


# -- choosing and grouping records -------------------------------------------------------------
def finished_records(root: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(path relative to root, record) of every valid finished record, sorted by path; and problems."""
    from curvebench.engine.records import read_record
    from curvebench.engine.rundir import RESULT_FILE
    from curvebench.errors import RecordError

    found, problems = [], []
    for file in sorted(root.rglob(RESULT_FILE)):
        rel = file.relative_to(root).as_posix()
        try:
            record = read_record(file)
        except RecordError as err:
            problems.append(str(err))
            continue
        if record["status"] == "done":
            found.append((rel, record))
    return found, problems


def sample_paths(paths: Sequence[str], sample: int | None) -> list[str]:
    """The ``sample`` paths with the smallest sha256 of the path (all if None or >= len), sorted by path.

    A fixed pseudo-random choice: the same runs on every machine and every call, spread over
    methods, cells and seeds, and a run stays picked when records are added (unless a new one
    hashes lower).
    """
    if sample is None or sample >= len(paths):
        return sorted(paths)
    return sorted(sorted(paths, key=lambda p: hashlib.sha256(p.encode()).hexdigest())[:sample])


def cell_key(record: Mapping[str, Any]) -> tuple[str, str]:
    return record["config_hash"], record["split_sha256"]


def seed_std(lasts: Sequence[float]) -> float | None:
    """Sample std (ddof 1) of last-epoch top-1 values; None for fewer than two."""
    return statistics.stdev(lasts) if len(lasts) > 1 else None


def one_image_points(record: Mapping[str, Any]) -> float | None:
    """One test image in accuracy points (100 / number of test images), from the confusion matrix."""
    conf = record["metrics"].get("confusion_last")
    total = sum(sum(row) for row in conf) if conf else 0
    return 100.0 / total if total else None


def tolerance_for(record: Mapping[str, Any], others: Sequence[float]) -> float:
    """t(0.975, m−1)·√2·s over the cell's m other seeds (see the module doc); one test image below 2 others."""
    from scipy.stats import t

    image = one_image_points(record) or 0.0
    s = seed_std(others)
    if s is None:
        return image
    s = max(s, image / math.sqrt(2.0))  # never below the accuracy's resolution (two seeds one image apart)
    return float(t.ppf(0.5 + CONFIDENCE / 2, len(others) - 1)) * math.sqrt(2.0) * s


def metrics_identical(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in EXACT_METRICS)


# -- re-running --------------------------------------------------------------------------------
def plan_from_record(record: Mapping[str, Any], scratch: Path, data_dir: Path, device: str | None) -> Any:
    """The recorded config as a planned run whose splits and results go to ``scratch``.

    Data come from ``data_dir``, except data generated beside the splits (the smoke suite's), which
    are generated again beside the scratch splits.
    """
    from omegaconf import OmegaConf

    from curvebench.config import validate_config
    from curvebench.suites import _planned

    config = copy.deepcopy(dict(record["config"]))
    paths = config.get("paths") or {}
    data = Path(str(paths.get("data", data_dir)))
    splits = Path(str(paths.get("splits", "")))
    if splits.parts and (data == splits or splits in data.parents):  # generated data beside the splits (smoke)
        data_dir = scratch / "splits" / data.relative_to(splits)
    config["paths"] = {"data": str(data_dir), "splits": str(scratch / "splits"), "results": str(scratch / "results")}
    config["train"] = {**config.get("train", {}), "progress": False}
    if device is not None:
        config["train"]["device"] = device
    cfg = OmegaConf.create(config)
    validate_config(cfg)
    return _planned(cfg, [], None)


def rerun(check: Check, scratch: Path, data_dir: Path, device: str | None) -> None:
    """Re-train one recorded run in ``scratch`` and fill in the check's verdict (bar the spread)."""
    from curvebench.data import get_split, load_dataset, spec_from_config
    from curvebench.engine.records import read_record
    from curvebench.engine.rundir import RunDir
    from curvebench.run import run_planned

    record = check.record
    plan = plan_from_record(record, scratch, data_dir, device)
    if plan.config_hash != record["config_hash"]:
        check.verdict = CONFIG_DIFFERS
        check.detail = f"the recorded config hashes to {plan.config_hash[:12]}, the record says {record['config_hash'][:12]}"
        return
    split = get_split(load_dataset(plan.cfg.dataset, Path(plan.cfg.paths.data)), spec_from_config(plan.cfg),
                      Path(plan.cfg.paths.splits))
    if split.sha256 != record["split_sha256"]:
        check.verdict = SPLIT_DIFFERS
        check.detail = f"split {split.sha256[:12]} here, {record['split_sha256'][:12]} recorded (other data?)"
        return
    outcome = run_planned(plan, progress=False)
    if outcome != "done":
        failure = read_record(RunDir(plan.run_dir).failed)["failure"]
        check.verdict, check.detail = FAILED, str(failure["cause"]).splitlines()[0]
        return
    check.here = read_record(RunDir(plan.run_dir).result)
    if check.here["split_sha256"] != record["split_sha256"]:
        check.verdict, check.detail = SPLIT_DIFFERS, "the re-run trained on another split"
        return
    if metrics_identical(record["metrics"], check.here["metrics"]):
        check.verdict = BIT_IDENTICAL
        return
    assert check.tolerance is not None
    check.verdict = WITHIN if abs(check.delta_last or 0.0) <= check.tolerance + 1e-9 else OUTSIDE
    if check.verdict == OUTSIDE and len(check.other_lasts) < 2:
        check.detail = f"a cell of {len(check.other_lasts) + 1} seed(s) has no spread"


def verify(root: Path, sample: int | None, scratch: Path, data_dir: Path, device: str | None = None,
           log: Any = None) -> tuple[list[Check], int, list[str]]:
    """Re-run the sample of ``root``'s finished records; returns (checks, finished records, problems)."""
    records, problems = finished_records(root)
    if not records:
        raise VerifyInputError(f"no finished run records (result.json) under {root}")
    cells: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)  # cell -> path -> last-epoch top-1
    for path, record in records:
        cells[cell_key(record)][path] = float(record["metrics"]["top1_last"])
    checks = []
    by_path = dict(records)
    picks = sample_paths(list(by_path), sample)
    for n, path in enumerate(picks, 1):
        record = by_path[path]
        others = [last for p, last in sorted(cells[cell_key(record)].items()) if p != path]
        check = Check(path, record, other_lasts=others, tolerance=tolerance_for(record, others))
        if log is not None:
            print(f"[{n}/{len(picks)}] re-training {path}", file=log, flush=True)
        try:
            rerun(check, scratch / f"run-{n}", data_dir, device)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # one run that cannot be re-trained must not hide the others
            check.verdict, check.detail = ERROR, f"{type(err).__name__}: {err}".splitlines()[0]
        checks.append(check)
    return checks, len(records), problems


# -- report ------------------------------------------------------------------------------------
def _f(x: float | None, sign: bool = False) -> str:
    return "" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")


def _cell(dataset: str, spec: Mapping[str, Any]) -> str:
    imb, p = spec.get("imbalance_factor"), spec.get("noise_rate")
    text = f"IF {imb:g}, p {p:g}" if isinstance(imb, (int, float)) and isinstance(p, (int, float)) else ""
    return " ".join(x for x in (dataset, text) if x) or "?"


def hardware_verdict(check: Check, here_env: Mapping[str, Any]) -> str:
    """Whether the record was made on this hardware and software stack."""
    from curvebench.engine.hardware import stack_differences, stack_key

    env = check.here["env"] if check.here is not None else here_env
    recorded = check.record["env"]
    if dict(stack_key(recorded))["cpu_isa"] is None:
        return "unknown (ISA not recorded)"
    if stack_key(recorded) == stack_key(env):
        return "same"
    return "other (" + ", ".join(d.split(" ")[0] for d in stack_differences(recorded, env)) + ")"


def render(checks: list[Check], n_records: int, root: Path, sample: int | None, here_env: Mapping[str, Any]) -> str:
    from collections import Counter

    from tabulate import tabulate

    from curvebench.engine.hardware import stack_label

    how = ("every finished run" if len(checks) == n_records else
           f"{len(checks)} of {n_records} finished runs (those with the smallest sha256 of their path)")
    rows = []
    labels: Counter[str] = Counter()
    datasets = {c.record["dataset"] for c in checks}
    for n, c in enumerate(checks, 1):
        spec = c.record["split"].get("spec") or {}
        labels[stack_label(c.record["env"])] += 1
        first = c.first_diff_epoch
        epochs = len(c.record["metrics"]["top1_per_epoch"])
        same_epochs = "" if c.here is None else (f"{epochs}/{epochs}" if first is None else f"{first}/{epochs}")
        rows.append([n, c.record["method"], _cell(c.record["dataset"] if len(datasets) > 1 else "", spec),
                     c.record["seed"], _f(c.record["metrics"]["top1_last"]),
                     _f(c.here["metrics"]["top1_last"]) if c.here else "", _f(c.delta_last, sign=True),
                     f"{_f(c.tolerance)} ({len(c.other_lasts) + 1} seed{'s' if c.other_lasts else ''})", same_epochs,
                     c.verdict + (f": {c.detail}" if c.detail else ""), hardware_verdict(c, here_env)])
    headers = ["#", "method", "cell", "seed", "last rec", "last here", "Δ last", "tolerance", "same epochs",
               "verdict", "recorded on"]
    counts = Counter(c.verdict for c in checks)
    summary = ", ".join(f"{counts[v]} {v}" for v in (BIT_IDENTICAL, WITHIN, OUTSIDE, SPLIT_DIFFERS, CONFIG_DIFFERS,
                                                       FAILED, ERROR) if counts[v])
    lines = [f"verify {root}: {how}; each re-trained from its recorded config in a scratch directory",
             "", tabulate(rows, headers=headers, disable_numparse=True), "",
             "tolerance: 95% bound t(0.975, m-1)·√2·s, s the std of the last-epoch top-1 of the cell's m other "
             "recorded seeds (at least that of two seeds one test image apart); same epochs: leading epochs with "
             "identical accuracy",
             "recorded on: " + "; ".join(f"{label} ({n} run{'s' if n > 1 else ''})" for label, n in sorted(labels.items())),
             "here:        " + stack_label(checks[0].here["env"] if checks and checks[0].here else here_env),
             f"result: {summary}"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="curvebench verify", description=__doc__.split("\n\n")[1],
        epilog="Verdicts: bit-identical; within spread (|Δ last-epoch top-1| within a 95% bound from the seed "
               "spread of the cell's other recorded seeds); outside spread; split differs; config differs; failed; "
               "error. Exit status 0 when every sampled run is bit-identical or within spread, 1 otherwise, 2 for "
               "bad input. README, Reproducibility, defines each.")
    p.add_argument("results", type=Path, help="results directory holding the run records (read only)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="re-run N finished runs, those with the smallest sha256 of their path: the same on "
                        "every machine (default: every finished run)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the recorded train.device)")
    p.add_argument("--data", type=Path, default=None, help="data root here (default: $CURVEBENCH_DATA or ./data)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="scratch directory for the re-runs, kept afterwards (default: a temporary one, removed)")
    args = p.parse_args(argv)
    from curvebench.paths import data_root

    prog = "curvebench verify: error:"
    root = args.results
    if not root.is_dir():
        print(f"{prog} results directory {root} does not exist", file=sys.stderr)
        return 2
    if args.sample is not None and args.sample < 1:
        print(f"{prog} --sample must be >= 1, got {args.sample}", file=sys.stderr)
        return 2
    if args.device and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"{prog} --device {args.device} but CUDA is not available here; use --device cpu", file=sys.stderr)
            return 2
    if args.workdir is not None:
        work, rroot = args.workdir.resolve(), root.resolve()
        if work == rroot or rroot in work.parents or work in rroot.parents:
            print(f"{prog} --workdir {args.workdir} must lie outside {root} (which is never written)", file=sys.stderr)
            return 2
        if work.exists() and any(work.iterdir()):
            print(f"{prog} --workdir {args.workdir} is not empty", file=sys.stderr)
            return 2
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="curvebench-verify-"))
    try:
        checks, n_records, problems = verify(root, args.sample, scratch, args.data or data_root(), args.device,
                                             log=sys.stderr)
    except VerifyInputError as err:
        print(f"{prog} {err}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    from curvebench.engine.records import environment

    print(render(checks, n_records, root, args.sample, environment(args.device or "cpu")))
    return 0 if all(c.verdict in PASSING for c in checks) else 1
