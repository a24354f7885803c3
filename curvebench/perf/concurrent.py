"""Aggregate throughput of N training processes sharing one device (PERFORMANCE.md §9.6).

The parent starts N workers (``python -m curvebench.perf.concurrent --worker ...``); each builds
its method on synthetic data, warms up, prints ``READY`` and waits; once all are ready the parent
writes ``GO`` to each, and each runs training steps for ``duration`` seconds (synchronising the
device only at the start and the end), then prints one JSON line with its images per second.
The sum is the aggregate. Run it under CUDA MPS (``nvidia-cuda-mps-control -d``) to let kernels
of different processes overlap; without MPS the processes time-slice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch


def worker(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="curvebench.perf.concurrent --worker")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--method", default="ce")
    p.add_argument("--model", default="resnet32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-size", type=int, default=8192)
    p.add_argument("--override", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from curvebench.methods import load_all_methods
    from curvebench.perf.bench import MethodCase, scratch_dir
    from curvebench.perf.synthetic import synthetic_data
    from curvebench.perf.timing import Clock

    load_all_methods()
    device = torch.device(args.device)
    data = synthetic_data(device, n_train=args.train_size, n_meta=1000, n_test=16, seed=args.seed)
    with scratch_dir() as wd:
        case = MethodCase(args.method, args.model, data, device, wd, batch_size=args.batch_size,
                          overrides=args.override)
        case.build()
        clock = Clock(device)
        noop = lambda name: None  # noqa: E731
        for _ in range(3):
            case.run_step(noop)
        clock.sync()
        print("READY", flush=True)
        if sys.stdin.readline().strip() != "GO":
            return 1
        clock.sync()
        t0 = time.perf_counter()
        steps = 0
        while time.perf_counter() - t0 < args.duration:
            case.run_step(noop)
            steps += 1
        clock.sync()
        dt = time.perf_counter() - t0
    print(json.dumps({"pid": os.getpid(), "steps": steps, "seconds": dt,
                      "images_per_second": steps * case.batch_size / dt, "loadavg": os.getloadavg()}), flush=True)
    return 0


def run_concurrent(n: int, *, method: str = "ce", model: str = "resnet32", device: str = "cpu", batch_size: int = 128,
                   duration: float = 20.0, threads: int = 1, overrides: Sequence[str] = (),
                   timeout: float = 900.0) -> dict[str, Any]:
    """Start ``n`` workers at once; return per-worker and aggregate images per second."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "curvebench.perf.concurrent", "--worker", "--method", method, "--model", model,
           "--device", device, "--batch-size", str(batch_size), "--duration", str(duration), "--threads", str(threads)]
    for o in overrides:
        cmd += ["--override", o]
    procs = [subprocess.Popen([*cmd, "--seed", str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(n)]
    try:
        deadline = time.time() + timeout
        for proc in procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if line.strip() != "READY":
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"worker {proc.pid} did not start: {line.strip()} {err[-2000:]}")
        for proc in procs:  # as close together as we can
            assert proc.stdin is not None
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"worker {proc.pid} failed (exit {proc.returncode}): {err[-2000:]}")
            results.append(json.loads(lines[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return {"processes": n, "method": method, "model": model, "device": device, "batch_size": batch_size,
            "duration_s": duration, "workers": results,
            "aggregate_images_per_second": sum(r["images_per_second"] for r in results)}


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        sys.exit(worker(sys.argv[1:]))
    sys.exit("use `curvebench perf --concurrent N`")
