"""``curvebench perf``: time every registered method's training step, phase by phase as the method
marks them (CurveNet at every SLMO level, ``--sl``) and MW-Net functional vs reference-style, with FLOPs and host-sync counts, on synthetic
CIFAR-shaped data; or extrapolate full runs from a few epochs (``--epochs``); or measure the
aggregate throughput of N concurrent runs (``--concurrent``). See PERFORMANCE.md.

    curvebench perf [--device cpu|cuda] [--methods ce ...] [--models resnet32 wrn16_8]
                    [--batch-size 128] [--rounds 10] [--quick] [--json out.json]
    curvebench perf --epochs 1 [--limit-batches 20] [--methods ...] [--device cuda]
    curvebench perf --concurrent 8 [--duration 30] [--methods ce] [--device cuda]
    curvebench perf --gpu-check --out DIR [--device cuda]   (scripts/gpu-check.sh; perf/gpu_check.py)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from curvebench.errors import ConfigError

QUICK = {"batch_size": 8, "rounds": 2, "warmup": 1, "steps": 1, "n_train": 512, "n_meta": 100, "n_test": 100}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="curvebench perf", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--methods", nargs="*", default=None,
                   help="registered methods to time (default: all; none: only the MW-Net reference steps)")
    p.add_argument("--models", nargs="+", default=None, help="default: resnet32 wrn16_8 (--quick: resnet32)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: the recipe's, 128)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 10)")
    p.add_argument("--steps", type=int, default=None, help="steps per case per round (default 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per case (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1; see PERFORMANCE.md)")
    p.add_argument("--sl", type=int, nargs="+", default=[0, 1, 2, 3],
                   help="SLMO levels (method.slmo) at which a method that declares one (CurveNet) is timed")
    p.add_argument("--at-epoch", type=int, default=0, help="epoch passed to on_epoch_start/train_step (default 0)")
    p.add_argument("--no-reference", action="store_true", help="skip MW-Net functional vs reference-style")
    p.add_argument("--compiled", action="store_true",
                   help="also time every method with train.compile=true train.compile_meta=true, interleaved "
                        "with its eager twin (rows '<case> [compiled]'; the first step's compile time is reported)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every case, e.g. train.channels_last=true (repeatable)")
    p.add_argument("--train-size", type=int, default=None, help="synthetic training images (default 49000)")
    p.add_argument("--quick", action="store_true", help="batch 8, 2 rounds, small data: a smoke test (CI)")
    p.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    g = p.add_argument_group("full-run extrapolation")
    g.add_argument("--epochs", type=int, default=None,
                   help="run this many real epochs from each sample epoch and extrapolate full runs")
    g.add_argument("--limit-batches", type=int, default=None, help="batches per measured epoch (scaled up)")
    g.add_argument("--sample-epochs", type=int, nargs="*", default=[],
                   help="extra sample epochs (always: 0 and the recipe milestones)")
    g.add_argument("--seeds", type=int, default=3, help="seeds per grid point for the Table 1 estimate")
    g = p.add_argument_group("concurrency")
    g.add_argument("--concurrent", type=int, nargs="+", default=None, metavar="N",
                   help="aggregate img/s of N processes at once on the device (e.g. 1 4 8 16)")
    g.add_argument("--duration", type=float, default=30.0, help="seconds each concurrent worker trains")
    g = p.add_argument_group("GPU check (scripts/gpu-check.sh)")
    g.add_argument("--gpu-check", action="store_true",
                   help="smoke suite, CE epoch, meta/CE ratios, concurrency and extrapolated runs with their targets, "
                        "as JSON and markdown in --out (at most 8 min on one GPU; --device cpu: a reduced size)")
    g.add_argument("--out", type=Path, default=None, help="folder for gpu-check.json and gpu-check.md")
    g.add_argument("--gpu-check-sections", nargs="+", default=None, metavar="SECTION",
                   help="only these sections: smoke ce_epoch meta_ce concurrent extrapolated (default: all)")
    return p


def _methods(requested: Sequence[str] | None) -> list[str]:
    from curvebench.engine.method import METHODS
    from curvebench.methods import load_all_methods

    load_all_methods()
    if requested is None or requested == ["all"]:
        return METHODS.names()
    if requested == ["none"] or not requested:
        return []
    unknown = [m for m in requested if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; registered: {', '.join(METHODS.names())}")
    return list(requested)


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    if args.gpu_check and args.out is None:
        raise ConfigError("--gpu-check writes its figures to a folder: add --out DIR")
    device = _device(args.device)
    _methods(args.methods)  # unknown names fail before any work
    torch.set_num_threads(args.threads)
    def log(line: str) -> None:  # progress on stderr, tables on stdout
        if not args.no_progress:
            print(line, file=sys.stderr, flush=True)

    from curvebench.perf.report import environment

    env = environment(device, args.threads)
    env["command"] = "curvebench perf " + " ".join(shlex.quote(a) for a in argv)
    print(f"# {env['command']}\n# {env['date']}  torch {env['torch']}  device {env.get('gpu', env['cpu'])} "
          f"({env['cpu_count']} CPUs, {args.threads} thread(s))  load avg {env['loadavg'][0]:.2f} "
          f"{env['loadavg'][1]:.2f} {env['loadavg'][2]:.2f}")
    out: dict[str, Any] = {"environment": env}
    if args.gpu_check:
        from curvebench.perf.gpu_check import SECTIONS, run

        sections = args.gpu_check_sections or SECTIONS
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"--gpu-check-sections: unknown {unknown}; choose among {' '.join(SECTIONS)}")
        return run(device, args.out, env, log, sections)
    if args.concurrent:
        out["concurrent"] = _concurrent(args, device, log)
    elif args.epochs:
        out["epochs"] = _epochs(args, device, log)
    else:
        out["steps"] = _steps(args, device, log)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


def _steps(args: argparse.Namespace, device: torch.device, log: Any) -> list[dict[str, Any]]:
    from curvebench.perf.bench import build_cases, run_cases, scratch_dir
    from curvebench.perf.report import format_report, to_json
    from curvebench.perf.synthetic import CIFAR_META, CIFAR_TEST, CIFAR_TRAIN, synthetic_data

    q = args.quick
    models = args.models or (["resnet32"] if q else ["resnet32", "wrn16_8"])
    batch = args.batch_size or (QUICK["batch_size"] if q else None)
    rounds = args.rounds if args.rounds is not None else (QUICK["rounds"] if q else 10)
    steps = args.steps or (QUICK["steps"] if q else 1)
    warmup = args.warmup if args.warmup is not None else (QUICK["warmup"] if q else 2)
    methods = _methods(args.methods)
    n_train = args.train_size or (QUICK["n_train"] if q else CIFAR_TRAIN)
    data = synthetic_data(device, n_train=n_train, n_meta=QUICK["n_meta"] if q else CIFAR_META,
                          n_test=QUICK["n_test"] if q else CIFAR_TEST)
    reports = []
    with scratch_dir() as wd:
        for model in models:
            log(f"{model}: building and checking cases")
            cases = build_cases(model, data, device, wd, methods=methods, batch_size=batch, at_epoch=args.at_epoch,
                                overrides=args.override, sls=args.sl, reference=not args.no_reference,
                                compiled=args.compiled)
            rep = run_cases(cases, model, device, rounds=rounds, steps=steps, warmup=warmup, log=log)
            print()
            print(format_report(rep, device), flush=True)
            reports.append(to_json(rep, device))
            del cases, rep
    return reports


def _epochs(args: argparse.Namespace, device: torch.device, log: Any) -> list[dict[str, Any]]:
    from curvebench.perf.bench import scratch_dir
    from curvebench.perf.extrapolate import RunEstimate, estimate_run, format_estimates, table1_hours
    from curvebench.perf.synthetic import CIFAR_META, CIFAR_TEST, CIFAR_TRAIN, synthetic_data

    models = args.models or ["resnet32"]
    methods = _methods(args.methods)
    data = synthetic_data(device, n_train=args.train_size or CIFAR_TRAIN, n_meta=CIFAR_META, n_test=CIFAR_TEST)
    out = []
    with scratch_dir() as wd:
        for model in models:
            estimates = []
            for m in methods:
                log(f"{model}/{m}: measuring epochs")
                try:
                    est = estimate_run(m, model, data, device, wd, epochs=args.epochs, limit_batches=args.limit_batches,
                                       extra_samples=args.sample_epochs, overrides=args.override, log=log)
                except Exception as err:  # noqa: BLE001 - a method that cannot run here is reported
                    est = RunEstimate(m, model, str(device), len(data.train_labels), [], f"{type(err).__name__}: {err}")
                estimates.append(est)
            print(f"\n== {model}: full runs extrapolated from measured epochs ({device}, "
                  f"{len(data.train_labels)} training images)")
            print(format_estimates(estimates, seeds=args.seeds), flush=True)
            for est in estimates:
                out.append({"model": model, "method": est.method, "skipped": est.skipped or None,
                            "run_hours": est.total_s / 3600 if not est.skipped else None,
                            "table1_hours": table1_hours(est, seeds=args.seeds) if not est.skipped else None,
                            "phases": [{"name": p.name, "epochs": p.epochs, "batch_size": p.batch_size,
                                        "train_s_per_epoch_at": p.samples, "eval_s": p.eval_s,
                                        "loadavg_at": p.loadavg} for p in est.phases]})
    return out


def _concurrent(args: argparse.Namespace, device: torch.device, log: Any) -> list[dict[str, Any]]:
    from curvebench.perf.concurrent import run_concurrent

    methods = _methods(args.methods) if args.methods else ["ce"]
    model = (args.models or ["resnet32"])[0]
    batch = args.batch_size or (QUICK["batch_size"] if args.quick else 128)
    duration = min(args.duration, 5.0) if args.quick else args.duration
    results = []
    for m in methods:
        base = None
        for n in args.concurrent:
            log(f"{model}/{m}: {n} concurrent process(es) for {duration:.0f} s")
            r = run_concurrent(n, method=m, model=model, device=str(device), batch_size=batch, duration=duration,
                               threads=args.threads, overrides=args.override)
            base = base or (r["aggregate_images_per_second"] / n if n == 1 else None)
            per = [f"{w['images_per_second']:.0f}" for w in r["workers"]]
            scale = f", x{r['aggregate_images_per_second'] / base:.2f} of one process" if base else ""
            print(f"{m} {model} batch {batch} on {device}: {n} process(es): aggregate "
                  f"{r['aggregate_images_per_second']:.0f} img/s (per process {' '.join(per)}){scale}", flush=True)
            results.append(r)
    return results
