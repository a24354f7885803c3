"""``curvebench``: run suites, make splits, show status, build the leaderboard.

    curvebench SUITE [hydra overrides] [--dry-run] [--device cpu|cuda] [--allow-cpu]
    curvebench splits SUITE [overrides] [--check] [--update-lock]
    curvebench status SUITE [overrides]
    curvebench leaderboard [RESULTS_DIR] [-o leaderboard/LEADERBOARD.md]
    curvebench list
    curvebench perf [--device cpu|cuda] [--methods ...] [--quick] [--epochs N] [--concurrent N ...]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Callable, Sequence

from curvenet.engine.method import ConfigError
from curvenet.registry import UnknownNameError

SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {}


def subcommand(name: str) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
    def deco(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        SUBCOMMANDS[name] = fn
        return fn

    return deco


def _suite_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("suite", help="suite name (see `curvebench list`)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=ce seed=1 recipe.epochs=5")
    return p


def _device_overrides(args: argparse.Namespace) -> list[str]:
    return [f"train.device={args.device}"] if getattr(args, "device", None) else []


# ----------------------------------------------------------------------------------------------
def run_suite_command(argv: list[str]) -> int:
    p = _suite_parser("curvebench", "Run every run of a suite; finished runs are skipped, interrupted ones resume.")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--allow-cpu", action="store_true", help="run a GPU suite on the CPU anyway")
    p.add_argument("--retry-failed", action="store_true", help="re-run failed runs (earlier failure records are kept)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    from tqdm.auto import tqdm

    from curvenet.run import run_planned, run_status, select_device
    from curvenet.suites import plan_suite

    runs = plan_suite(args.suite, list(args.overrides) + _device_overrides(args))
    first = runs[0].cfg
    device = select_device(str(first.train.device))
    if args.dry_run:
        from tabulate import tabulate

        rows = [(i + 1, run_status(r.run_dir), r.label, str(r.run_dir)) for i, r in enumerate(runs)]
        print(tabulate(rows, headers=["#", "state", "grid point", "run directory"]))
        print(f"{len(runs)} runs in suite {args.suite!r} on {device}")
        return 0
    if first.suite.requires_gpu and device.type != "cuda" and not (args.allow_cpu or first.train.allow_cpu):
        raise ConfigError(
            f"suite {args.suite!r} needs a GPU ({len(runs)} runs of {first.recipe.epochs} epochs) and no CUDA device "
            f"was found. Run it on a GPU machine (e.g. `docker compose run bench {args.suite}`), narrow it "
            "(e.g. method=ce seed=1 recipe.epochs=2), or pass --allow-cpu to run it on this CPU anyway"
        )
    progress = not args.no_progress and bool(first.train.progress)
    counts: Counter[str] = Counter()
    bar = tqdm(runs, desc=f"suite {args.suite}", unit="run", disable=not progress, position=0)
    for plan in bar:
        bar.set_postfix_str(plan.label[:60])
        counts[run_planned(plan, progress=progress, retry_failed=args.retry_failed)] += 1
    bar.close()
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"suite {args.suite}: {summary}; results under {runs[0].config['paths']['results']}")
    if counts["failed"] or counts["failed-before"]:
        print("some runs failed: their failed.json names the epoch and the cause "
              "(`curvebench status SUITE`; re-run them with --retry-failed)", file=sys.stderr)
        return 1
    return 0


@subcommand("status")
def status_command(argv: list[str]) -> int:
    p = _suite_parser("curvebench status", "Done, started, failed and missing runs of a suite.")
    args = p.parse_args(argv)
    from tabulate import tabulate

    from curvenet.run import run_status
    from curvenet.suites import plan_suite

    runs = plan_suite(args.suite, args.overrides)
    counts: Counter[str] = Counter(run_status(r.run_dir) for r in runs)
    rows = [(run_status(r.run_dir), r.label, str(r.run_dir)) for r in runs]
    print(tabulate(rows, headers=["state", "grid point", "run directory"]))
    print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


@subcommand("splits")
def splits_command(argv: list[str]) -> int:
    p = _suite_parser("curvebench splits", "Create every split a suite needs and print counts, rates and hashes.")
    p.add_argument("--check", action="store_true", help="fail when a split differs from the committed lock file")
    p.add_argument("--update-lock", action="store_true", help="write the splits' hashes into the lock file")
    args = p.parse_args(argv)
    from pathlib import Path

    from curvenet.config import CONF_DIR
    from curvenet.data import build_splits, spec_from_config
    from curvenet.suites import plan_suite

    items, seen = [], set()
    runs = plan_suite(args.suite, args.overrides)
    for r in runs:
        spec = spec_from_config(r.cfg)
        if spec.spec_hash() not in seen:
            seen.add(spec.spec_hash())
            items.append((r.cfg.dataset, spec))
    table, ok = build_splits(items, Path(runs[0].cfg.paths.data), Path(runs[0].cfg.paths.splits),
                             CONF_DIR / "splits.lock.json", check=args.check, update_lock=args.update_lock)
    print(table)
    return 0 if ok else 1


@subcommand("leaderboard")
def leaderboard_command(argv: list[str]) -> int:
    from leaderboard.cli import main as leaderboard_main

    return leaderboard_main(argv)


@subcommand("perf")
def perf_command(argv: list[str]) -> int:
    from curvenet.perf.cli import main as perf_main

    return perf_main(argv)


@subcommand("list")
def list_command(argv: list[str]) -> int:
    from curvenet.engine.method import METHODS
    from curvenet.methods import load_all_methods
    from curvenet.models import MODELS
    from curvenet.suites import available_suites

    load_all_methods()
    print("suites: ", " ".join(available_suites()))
    print("methods:", " ".join(METHODS.names()))
    print("models: ", " ".join(MODELS.names()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        fn = SUBCOMMANDS.get(argv[0])
        return fn(argv[1:]) if fn else run_suite_command(argv)
    except (ConfigError, UnknownNameError) as err:
        print(f"curvebench: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # DataError, RecordError: clear messages, no traceback
        from curvenet.data import DataError
        from curvenet.engine.records import RecordError

        if isinstance(err, (DataError, RecordError)):
            print(f"curvebench: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
