"""``curvebench``: run suites, make splits, show status, build the leaderboard.

    curvebench SUITE [hydra overrides] [--dry-run] [--show-config] [--device cpu|cuda] [--allow-cpu]
    curvebench SUITE --workers N [--gpus 0,1]          N worker processes on this machine
    curvebench SUITE hydra/launcher=submitit_slurm [hydra.launcher.*=...]   one cluster job per run
    curvebench splits SUITE [overrides] [--check] [--update-lock]
    curvebench status SUITE [overrides] [--runs]
    curvebench leaderboard [RESULTS_DIR] [-o FILE.md] [--check]   default output: leaderboard-out/
    curvebench verify RESULTS_DIR [--sample N]     re-train recorded runs here and compare
    curvebench list [SUITE]                            suites (description, GPU), methods, models
    curvebench perf [--device cpu|cuda] [--methods ...] [--quick] [--epochs N] [--concurrent N ...]
    curvebench --version

Flags may come before, between or after the overrides (`curvebench digits --dry-run method=ce`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Any, Callable, Sequence

from curvebench.container import root_refusal
from curvebench.errors import ConfigError
from curvebench.registry import UnknownNameError

SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {}


def subcommand(name: str) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
    def deco(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        SUBCOMMANDS[name] = fn
        return fn

    return deco


def _suite_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("suite", nargs="?", help="suite name (see `curvebench list`)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=ce seed=1 recipe.epochs=5")
    return p


def _parse_suite_args(p: argparse.ArgumentParser, argv: list[str], usage: str) -> argparse.Namespace:
    """Flags before, between and after the overrides; a missing suite says what the command can do."""
    args = p.parse_intermixed_args(argv)
    if args.suite is None:
        from curvebench.suites import available_suites

        raise ConfigError(f"name a suite: `{usage}` (e.g. `{usage.split(' SUITE')[0]} digits`); suites: "
                          f"{', '.join(available_suites())} (`curvebench list` describes each)")
    return args


def _device_overrides(args: argparse.Namespace) -> list[str]:
    return [f"train.device={args.device}"] if getattr(args, "device", None) else []


# ----------------------------------------------------------------------------------------------
def run_suite_command(argv: list[str]) -> int:
    p = _suite_parser("curvebench", "Run every run of a suite; finished runs are skipped, interrupted ones resume.")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    p.add_argument("--show-config", action="store_true",
                   help="print the resolved config of every planned run (YAML) and exit, train nothing")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--allow-cpu", action="store_true", help="run a GPU suite on the CPU anyway")
    p.add_argument("--retry-failed", action="store_true", help="re-run failed runs (earlier failure records are kept)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per run instead)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="train N runs at a time in N worker processes (default 1, in this process)")
    p.add_argument("--gpus", metavar="LIST", help="GPUs for the workers, e.g. 0,1 (round-robin via CUDA_VISIBLE_DEVICES)")
    p.add_argument("--worker-name", help=argparse.SUPPRESS)  # set by --workers for its children
    args = _parse_suite_args(p, argv, "curvebench SUITE [overrides] [--dry-run] [--show-config]")
    from curvebench import workers
    from curvebench.engine.rundir import RunDir
    from curvebench.launch import split_overrides, wants_launcher
    from curvebench.run import select_device
    from curvebench.suites import plan_suite

    extra = _device_overrides(args) + (["train.allow_cpu=true"] if args.allow_cpu else [])
    if wants_launcher(args.overrides):
        if args.dry_run or args.show_config or args.workers != 1 or args.gpus:
            raise ConfigError("hydra/launcher=... runs one launcher job per run: leave out --dry-run, --show-config, --workers "
                              "and --gpus (ask the launcher for GPUs, e.g. hydra.launcher.gpus_per_node=1)")
        from curvebench.preflight import preflight

        preflight(plan_suite(args.suite, split_overrides(args.overrides)[1] + extra))  # before any job exists
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
    if args.show_config:
        _show_config(runs)
        return 0
    if gpus:
        import torch

        if not torch.cuda.is_available():  # checked once here, not once per worker
            raise ConfigError(f"--gpus {args.gpus}: this machine has no usable CUDA device; leave out --gpus "
                              "(--workers N trains on the CPU) or run on a GPU machine")
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
    if args.worker_name is None:  # workers' parent (or this process) checks once for all workers
        from curvebench.preflight import preflight

        preflight(runs)
    workers.sigterm_as_interrupt()
    done_before = {i for i, r in enumerate(runs) if RunDir(r.run_dir).result.exists()}
    if args.workers > 1 or gpus:  # a worker process sees only its GPU (CUDA_VISIBLE_DEVICES)
        code = _run_workers(args, runs, gpus)
    else:
        code = _run_here(args, runs)
    if args.worker_name is None:
        _print_trained(runs, done_before)
    return code


def _show_config(runs: list) -> None:
    """Every planned run's resolved config as one YAML document each."""
    from omegaconf import OmegaConf

    for i, r in enumerate(runs):
        print(f"--- # run {i + 1}/{len(runs)}: {r.label} (config hash {r.config_hash[:12]}, {r.run_dir})")
        print(OmegaConf.to_yaml(r.cfg, resolve=True), end="")


def _print_trained(runs: list, done_before: set[int]) -> None:
    """A small table of the runs this invocation finished: method, cell, seed, last and best accuracy."""
    from tabulate import tabulate

    from curvebench.engine.records import read_record
    from curvebench.engine.rundir import RunDir
    from curvebench.errors import RecordError
    from curvebench.suites import _fmt
    from curvebench.workers import _short_keys, cell_of

    new = [r for i, r in enumerate(runs) if i not in done_before and RunDir(r.run_dir).result.exists()]
    if not new:
        return
    short = _short_keys(list(dict.fromkeys(k for r in new for k, _ in cell_of(r.grid))))
    rows = []
    for r in new:
        try:
            metrics = read_record(RunDir(r.run_dir).result).get("metrics") or {}
        except RecordError:
            metrics = {}
        cell = " ".join(f"{short[k]}={_fmt(v)}" for k, v in cell_of(r.grid)) or "(all)"
        rows.append((r.config["method"]["name"], cell, r.config["seed"], metrics.get("top1_last"),
                     metrics.get("top1_best")))
    print(f"trained now ({len(rows)} runs; top-1 test accuracy, %):")
    print(tabulate(rows, headers=["method", "cell", "seed", "last", "best"], floatfmt=".2f"))


def _progress_label(plan: Any) -> str:
    """The run's grid point with short keys, seed included (never cut)."""
    from curvebench.suites import _fmt
    from curvebench.workers import _short_keys

    short = _short_keys(list(plan.grid))
    return " ".join(f"{short[k]}={_fmt(v)}" for k, v in plan.grid.items())


def _run_here(args: argparse.Namespace, runs: list) -> int:
    """One worker in this process: claims each run before training it, waits for runs held elsewhere."""
    from tqdm.auto import tqdm

    from curvebench import workers
    from curvebench.engine.rundir import RunDir

    # bars only on a terminal: into a pipe or a file, one line per run (no \r frames)
    progress = (not args.no_progress and bool(runs[0].cfg.train.progress) and args.worker_name is None
                and sys.stderr.isatty())
    tag = f"[{args.worker_name}] " if args.worker_name else ""
    bar = tqdm(total=len(runs), desc=f"suite {args.suite}", unit="run", disable=not progress, position=0)
    bar.update(sum(state == "done" or (state == "failed" and not args.retry_failed)
                   for state in (RunDir(r.run_dir).status for r in runs)))

    def report(event: "workers.Event") -> None:
        if event.kind == "start":
            bar.set_postfix_str(_progress_label(event.plan))
        elif event.kind == "end":
            bar.update(1)
            if not progress:
                # one write per line (end included): worker processes share the pipe, and with
                # PYTHONUNBUFFERED print's text and newline would be two writes that interleave
                print(f"{tag}{event.outcome:<8} {event.index}/{len(runs)} {event.seconds:7.1f} s  {event.plan.label}\n",
                      end="", flush=True)
        elif event.kind == "wait":
            message = (f"{tag}waiting for {len(event.waiting)} run(s) that other workers are training "
                       "(reclaimed if their worker dies)")
            bar.write(message) if progress else print(message, flush=True)

    counts = workers.work(runs, worker=args.worker_name or "", retry_failed=args.retry_failed, progress=progress,
                          report=report)
    bar.close()
    if args.worker_name:
        print(f"{tag}finished: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if n) + "\n", end="",
              flush=True)
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
    from curvebench import workers

    child = [args.suite, *args.overrides, "--no-progress"]
    child += ["--retry-failed"] if args.retry_failed else []
    child += ["--allow-cpu"] if args.allow_cpu else []
    child += ["--device", args.device] if args.device else []
    where = f" on GPUs {','.join(gpus)}" if gpus else ""
    print(f"suite {args.suite}: {len(runs)} runs, {args.workers} workers{where}", flush=True)

    def on_exit(i: int, code: int) -> None:  # at once: a killed worker's claim still names its run
        if code:
            print(workers.describe_worker_exit(i, code, runs), file=sys.stderr, flush=True)

    codes = workers.wait_workers(workers.spawn_workers(args.workers, child, gpus), on_exit=on_exit)
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
    from curvebench.launch import launch_suite

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
    args = _parse_suite_args(p, argv, "curvebench status SUITE [overrides] [--runs]")
    from tabulate import tabulate

    from curvebench import slurm, workers
    from curvebench.suites import plan_suite

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
    args = _parse_suite_args(p, argv, "curvebench splits SUITE [overrides] [--check] [--update-lock]")
    from pathlib import Path

    from curvebench.config import CONF_DIR
    from curvebench.data import build_splits, spec_from_config
    from curvebench.suites import plan_suite

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


@subcommand("verify")
def verify_command(argv: list[str]) -> int:
    from curvebench.verify import main as verify_main

    return verify_main(argv)


@subcommand("perf")
def perf_command(argv: list[str]) -> int:
    from curvebench.perf.cli import main as perf_main

    return perf_main(argv)


@subcommand("list")
def list_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="curvebench list",
                                description="Suites (what each runs, whether it needs a GPU), methods and models; "
                                            "with SUITE, that suite's grid.")
    p.add_argument("suite", nargs="?", help="show this suite's grid, tables and run count")
    args = p.parse_args(argv)
    from tabulate import tabulate

    from curvebench.data import DATASETS, load_dataset_plugins
    from curvebench.engine.method import METHODS
    from curvebench.methods import load_all_methods
    from curvebench.models import MODELS
    from curvebench.plugins import installed_plugins
    from curvebench.suites import available_suites, load_suite

    load_all_methods()
    load_dataset_plugins()
    if args.suite is not None:
        return _describe_suite(args.suite)
    rows = []
    for name in available_suites():
        suite = load_suite(name)
        rows.append((name, "yes" if suite.requires_gpu else "no", suite.description))
    print(tabulate(rows, headers=["suite", "GPU", "description"]))
    print()
    print("methods:", " ".join(METHODS.names()))
    print("models: ", " ".join(MODELS.names()))
    print("datasets:", " ".join(DATASETS.names()))
    for dist, provides in installed_plugins().items():
        print(f"plugin {dist}: " + "; ".join(f"{kind} {' '.join(names)}" for kind, names in provides.items()))
    print("\n`curvebench list SUITE`: its grid; `curvebench SUITE --dry-run`: its runs and their state; "
          "`curvebench status SUITE`: progress per cell")
    return 0


def _describe_suite(name: str) -> int:
    from omegaconf import OmegaConf

    from curvebench.suites import load_suite, plan_suite

    suite = load_suite(name)
    runs = plan_suite(name)
    print(f"suite {name}: {suite.description}")
    print(f"needs a GPU: {'yes (--allow-cpu runs it on a CPU anyway)' if suite.requires_gpu else 'no'}")
    print(f"tables: {', '.join(suite.tables) or '-'}; {len(runs)} runs")
    for i, block in enumerate(OmegaConf.to_container(suite.grid, resolve=True)):  # type: ignore[arg-type]
        print(f"grid block {i + 1}: " + " x ".join(f"{k} {v}" for k, v in block.items()))
    print(f"narrow it with overrides of grid keys, e.g. `curvebench {name} method=ce seed=1 --dry-run`")
    return 0


def _version() -> str:
    from curvebench import __version__
    from curvebench.engine.records import git_state

    sha, dirty = git_state()
    where = "" if sha == "unknown" else f" (git {sha[:12]}{', dirty tree' if dirty else ''})"
    return f"curvebench {__version__}{where}"


def _silence_stdout() -> None:
    """The reader of stdout went away (`curvebench --help | head -3`): drop what is left, quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured in tests)
        pass


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(_version())
        return 0
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
    except BrokenPipeError:
        raise
    except Exception as err:  # DataError, RecordError: clear messages, no traceback
        from curvebench.errors import DataError, RecordError

        if isinstance(err, (DataError, RecordError)):
            print(f"curvebench: error: {err}", file=sys.stderr)
            return 2
        raise


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    refusal = root_refusal()  # inside the container only (the image sets CURVEBENCH_CONTAINER=1)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    try:
        try:
            code = _dispatch(argv)
        finally:  # argparse's --help exits through SystemExit: flush here, where a closed pipe is caught
            sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
