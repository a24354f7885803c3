"""``curvebench``: run suites, make splits, show status, build the leaderboard.

    curvebench SUITE [hydra overrides] [--dry-run] [--device cpu|cuda] [--allow-cpu]
    curvebench SUITE --workers N [--gpus 0,1]          N worker processes on this machine
    curvebench SUITE hydra/launcher=submitit_slurm [hydra.launcher.*=...]   one cluster job per run
    curvebench splits SUITE [overrides] [--check] [--update-lock]
    curvebench status SUITE [overrides] [--runs]
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per run instead)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="train N runs at a time in N worker processes (default 1, in this process)")
    p.add_argument("--gpus", metavar="LIST", help="GPUs for the workers, e.g. 0,1 (round-robin via CUDA_VISIBLE_DEVICES)")
    p.add_argument("--worker-name", help=argparse.SUPPRESS)  # set by --workers for its children
    args = p.parse_args(argv)
    from curvenet import workers
    from curvenet.launch import split_overrides, wants_launcher
    from curvenet.run import select_device
    from curvenet.suites import plan_suite

    extra = _device_overrides(args) + (["train.allow_cpu=true"] if args.allow_cpu else [])
    if wants_launcher(args.overrides):
        if args.dry_run or args.workers != 1 or args.gpus:
            raise ConfigError("hydra/launcher=... runs one launcher job per run: leave out --dry-run, --workers "
                              "and --gpus (ask the launcher for GPUs, e.g. hydra.launcher.gpus_per_node=1)")
        return _launch(args, extra)
    if any(o.startswith(("hydra/", "hydra.")) for o in args.overrides):
        raise ConfigError(f"{split_overrides(args.overrides)[0]}: hydra.* settings apply to a launcher; "
                          "add hydra/launcher=submitit_slurm (or submitit_local)")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    try:
        gpus = workers.parse_gpus(args.gpus)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.worker_name is not None:
        gpus = []  # a worker process: its GPU is already chosen
    elif gpus and args.workers == 1:
        args.workers = len(gpus)  # --gpus 0,1 alone: one worker per GPU

    runs = plan_suite(args.suite, list(args.overrides) + _device_overrides(args))
    first = runs[0].cfg
    device = select_device(str(first.train.device)) if not gpus else None
    if args.dry_run:
        from tabulate import tabulate

        rows = [(i + 1, workers.live_status(r.run_dir), r.label, str(r.run_dir)) for i, r in enumerate(runs)]
        print(tabulate(rows, headers=["#", "state", "grid point", "run directory"]))
        print(f"{len(runs)} runs in suite {args.suite!r} on {device or 'GPUs ' + ','.join(gpus)}")
        return 0
    if (first.suite.requires_gpu and device is not None and device.type != "cuda"
            and not (args.allow_cpu or first.train.allow_cpu)):
        raise ConfigError(
            f"suite {args.suite!r} needs a GPU ({len(runs)} runs of {first.recipe.epochs} epochs) and no CUDA device "
            f"was found. Run it on a GPU machine (e.g. `docker compose run bench {args.suite}`), narrow it "
            "(e.g. method=ce seed=1 recipe.epochs=2), or pass --allow-cpu to run it on this CPU anyway"
        )
    workers.sigterm_as_interrupt()
    if args.workers > 1 or gpus:  # a worker process sees only its GPU (CUDA_VISIBLE_DEVICES)
        return _run_workers(args, runs, gpus)
    return _run_here(args, runs)


def _run_here(args: argparse.Namespace, runs: list) -> int:
    """One worker in this process: claims each run before training it, waits for runs held elsewhere."""
    from tqdm.auto import tqdm

    from curvenet import workers

    progress = not args.no_progress and bool(runs[0].cfg.train.progress) and args.worker_name is None
    tag = f"[{args.worker_name}] " if args.worker_name else ""
    bar = tqdm(total=len(runs), desc=f"suite {args.suite}", unit="run", disable=not progress, position=0)
    bar.update(sum((r.run_dir / "result.json").exists()
                   or (not args.retry_failed and (r.run_dir / "failed.json").exists()) for r in runs))

    def report(event: "workers.Event") -> None:
        if event.kind == "start":
            bar.set_postfix_str(event.plan.label[:60])
        elif event.kind == "end":
            bar.update(1)
            if not progress:
                print(f"{tag}{event.outcome:<8} {event.index}/{len(runs)} {event.seconds:7.1f} s  {event.plan.label}",
                      flush=True)
        elif event.kind == "wait":
            message = (f"{tag}waiting for {len(event.waiting)} run(s) that other workers are training "
                       "(reclaimed if their worker dies)")
            bar.write(message) if progress else print(message, flush=True)

    counts = workers.work(runs, worker=args.worker_name or "", retry_failed=args.retry_failed, progress=progress,
                          report=report)
    bar.close()
    if args.worker_name:
        print(f"{tag}finished: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if n), flush=True)
    else:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        print(f"suite {args.suite}: {summary}; results under {runs[0].config['paths']['results']}")
    if counts["failed"] or counts["failed-before"]:
        if not args.worker_name:
            print("some runs failed: their failed.json names the epoch and the cause "
                  "(`curvebench status SUITE`; re-run them with --retry-failed)", file=sys.stderr)
        return 1
    return 0


def _run_workers(args: argparse.Namespace, runs: list, gpus: list[str]) -> int:
    """N worker processes pull runs from the suite; claims keep them (and other invocations) apart."""
    from curvenet import workers

    child = [args.suite, *args.overrides, "--no-progress"]
    child += ["--retry-failed"] if args.retry_failed else []
    child += ["--allow-cpu"] if args.allow_cpu else []
    child += ["--device", args.device] if args.device else []
    where = f" on GPUs {','.join(gpus)}" if gpus else ""
    print(f"suite {args.suite}: {len(runs)} runs, {args.workers} workers{where}", flush=True)
    codes = workers.wait_workers(workers.spawn_workers(args.workers, child, gpus))
    states = Counter(workers.live_status(r.run_dir) for r in runs)
    print(f"suite {args.suite}: " + ", ".join(f"{n} {k}" for k, n in sorted(states.items()))
          + f"; results under {runs[0].config['paths']['results']}")
    if states["failed"]:
        print("some runs failed: their failed.json names the epoch and the cause "
              "(`curvebench status SUITE`; re-run them with --retry-failed)", file=sys.stderr)
    unfinished = len(runs) - states["done"] - states["failed"]
    if unfinished:
        print(f"{unfinished} runs are not finished (worker exit codes {codes}); run the same command again "
              "to resume them", file=sys.stderr)
    return 1 if states["failed"] or unfinished or any(codes) else 0


def _launch(args: argparse.Namespace, extra: list[str]) -> int:
    from curvenet.launch import launch_suite

    counts, runs = launch_suite(args.suite, args.overrides, retry_failed=args.retry_failed, extra=extra)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"suite {args.suite}: {summary}; results under {runs[0].config['paths']['results']}")
    bad = counts["failed"] + counts["failed-before"] + counts["error"] + counts["lost"]
    known = ("done", "skipped", "failed", "failed-before", "error", "lost", "running-elsewhere")
    unfinished = sum(n for k, n in counts.items() if k not in known)  # timed-out, or a job ended early (cancelled)
    if unfinished:
        print(f"{unfinished} runs did not finish (their jobs ended early); run the same command again to resume them "
              "from their last epoch checkpoint (docs/CLUSTER.md: time limits and requeueing)", file=sys.stderr)
    return 1 if bad or unfinished else 0


@subcommand("status")
def status_command(argv: list[str]) -> int:
    p = _suite_parser("curvebench status", "Done, running, failed, interrupted and missing runs of a suite, per cell.")
    p.add_argument("--runs", action="store_true", help="list every run (state, worker, directory) as well")
    args = p.parse_args(argv)
    from tabulate import tabulate

    from curvenet import slurm, workers
    from curvenet.suites import plan_suite

    runs = plan_suite(args.suite, args.overrides)
    states = [workers.live_status(r.run_dir) for r in runs]
    jobs = slurm.job_states(runs, states)  # SLURM job id and state of each unfinished run that has one
    if args.runs:
        owners = {id(plan): info for plan, info in workers.iter_claims(runs)}
        rows = []
        for i, (r, s) in enumerate(zip(runs, states)):
            info = owners.get(id(r))
            who = info.owner if info is not None and s in ("running", "interrupted") else ""
            rows.append((s, r.label, who, *((" ".join(jobs.get(i, ("", ""))).strip(),) if jobs else ()),
                         str(r.run_dir)))
        print(tabulate(rows, headers=["state", "grid point", "worker", *(["SLURM job"] if jobs else []),
                                      "run directory"]))
        print()
    headers, rows, totals = workers.status_table(runs, states)
    print(f"suite {args.suite}: cells x methods")
    print(tabulate(rows, headers=headers))
    print(workers.totals_line(totals))
    if jobs and not args.runs:
        print()
        print(tabulate([(job, state, runs[i].label) for i, (job, state) in sorted(jobs.items())],
                       headers=["SLURM job", "state", "grid point"]))
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
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (docker stop, a --workers parent): claims are released
        print("curvebench: interrupted; finished runs are kept, run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as err:  # DataError, RecordError: clear messages, no traceback
        from curvenet.data import DataError
        from curvenet.engine.records import RecordError

        if isinstance(err, (DataError, RecordError)):
            print(f"curvebench: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
