"""``curvebench perf --gpu-check --out DIR`` (``scripts/gpu-check.sh``): the figures of one GPU in one
short slot (at most 8 minutes on one NVIDIA GPU), as ``DIR/gpu-check.json`` and ``DIR/gpu-check.md``:

- ``smoke``: the smoke suite on the device, every registered method (its own scratch data, splits
  and results);
- ``ce_epoch``: a CE ResNet-32 epoch (CIFAR-10 size, batch 128) eager, compiled (``train.compile``)
  and with CUDA graphs (``train.cuda_graphs``), from interleaved step timings;
- ``meta_ce``: CurveNet's whole meta step over the CE step at SL 0 and SL 3, eager, compiled
  (``train.compile_meta=true``) and compiled with CUDA graphs (``mode="reduce-overhead"``), each
  over the CE step of the same mode and over the eager one;
- ``concurrent``: aggregate img/s of 1, 2 and 4 concurrent CE runs (``concurrent.py``);
- ``extrapolated``: one ``cifar10`` run per method and Table 1 (3 seeds) from a few measured
  batches at each sample epoch (``extrapolate.py``).

Targets (figures, not tests: a missed target is reported, the exit status stays 0; 1 means a
section crashed): CE epoch <= 0.8 s graphed, meta / CE <= 5 at SL 0 and <= 3 at SL 3, Table 1
(3 seeds) <= 10 GPU-hours. A column that cannot run here says why: ``n/a`` (CUDA graphs on a CPU),
``not available`` (a flag this version lacks, e.g. ``train.compile_meta``).

``--device cpu`` runs a reduced size (ResNet-8, batch 8, a smoke subset, short timings, the
compiled columns through ``compile_backend=eager``) in about two minutes, so that CI runs every
section; its figures mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

JSON_FILE, MARKDOWN_FILE = "gpu-check.json", "gpu-check.md"
SECTIONS = ("smoke", "ce_epoch", "meta_ce", "concurrent", "extrapolated")
MODES = ("eager", "compiled", "graphed")
SLS = (0, 3)
META_METHOD = "curvenet"  # the meta step whose SLMO levels are timed
NA, NOT_AVAILABLE = "n/a", "not available"
TARGET_CE_EPOCH_S = 0.8
TARGET_META_CE = {0: 5.0, 3: 3.0}
TARGET_TABLE1_HOURS = 10.0
TABLE1_SEEDS = 3

# per mode: the overrides of the CE step and of the meta step
MODE_OVERRIDES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "eager": ((), ()),
    "compiled": (("train.compile=true",), ("train.compile=true", "train.compile_meta=true")),
    "graphed": (("train.cuda_graphs=true",), ("train.cuda_graphs=true", "train.compile_meta=true")),
}


@dataclass(frozen=True)
class CheckSize:
    model: str
    batch_size: int
    train_size: int  # synthetic training images (CIFAR-10 with its meta set removed, on a GPU)
    meta_size: int
    test_size: int
    rounds: int  # interleaved timing rounds per mode
    steps: int  # steps per case per round
    warmup: int  # untimed steps per case first (compilation, CUDA graph capture, autotuning)
    smoke_methods: tuple[str, ...] | None  # None: every registered method, one suite run
    concurrent: tuple[int, ...]
    concurrent_s: float  # seconds each concurrent worker trains
    extrapolate_methods: tuple[str, ...] | None  # None: every registered method
    limit_batches: int  # batches per sample epoch of the extrapolation
    compile_overrides: tuple[str, ...] = ()  # added to every compiled mode


FULL = CheckSize("resnet32", 128, 49000, 1000, 10000, rounds=5, steps=10, warmup=3, smoke_methods=None,
                 concurrent=(1, 2, 4), concurrent_s=15.0, extrapolate_methods=None, limit_batches=10)
REDUCED = CheckSize("resnet8", 8, 256, 40, 40, rounds=2, steps=1, warmup=1, smoke_methods=("ce", "curvenet"),
                    concurrent=(1, 2), concurrent_s=1.0, extrapolate_methods=("ce", "mwnet_noise", "curvenet"),
                    limit_batches=1, compile_overrides=("train.compile_backend=eager",))


def size_for(device: torch.device) -> CheckSize:
    return FULL if device.type == "cuda" else REDUCED


def mode_overrides(mode: str, meta: bool, device: torch.device, size: CheckSize) -> tuple[str, ...] | str:
    """The overrides of ``mode`` for the CE (``meta=False``) or the meta step, or why it cannot run."""
    if mode == "graphed" and device.type != "cuda":
        return NA
    return (*MODE_OVERRIDES[mode][meta], *(size.compile_overrides if mode != "eager" else ()))


# -- sections -----------------------------------------------------------------------------------
def smoke_section(device: torch.device, size: CheckSize, log: Callable[[str], None]) -> dict[str, Any]:
    """The smoke suite in a subprocess (its own data, splits and results), per method: status, time."""
    root = Path(__file__).resolve().parents[2]
    env_base = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    methods: dict[str, Any] = {}
    failures: list[str] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="curvebench-gpu-check-smoke-") as tmp:
        env = {**env_base, "CURVEBENCH_DATA": f"{tmp}/data", "CURVEBENCH_SPLITS": f"{tmp}/splits",
               "CURVEBENCH_RESULTS": f"{tmp}/results"}
        for grid in ([None] if size.smoke_methods is None else list(size.smoke_methods)):
            cmd = [sys.executable, "-m", "curvebench.cli", "smoke", "--device", str(device), "--no-progress"]
            cmd += [f"method={grid}"] if grid else []
            log(f"smoke: {' '.join(cmd[2:])}")
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                failures.append(f"`{' '.join(cmd[2:])}` exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
        for name in ("result.json", "failed.json"):
            for path in sorted(Path(tmp, "results").rglob(name)):
                rec = json.loads(path.read_text())
                methods[rec["method"]] = {"status": rec["status"], "wall_s": rec.get("wall_time_s"),
                                          "top1_last": rec.get("metrics", {}).get("top1_last")}
    failures += [f"{m}: {r['status']}" for m, r in methods.items() if r["status"] != "done"]
    expected = list(size.smoke_methods) if size.smoke_methods else None
    if expected:
        failures += [f"{m}: no record" for m in expected if m not in methods]
    return {"methods": methods, "wall_s": time.perf_counter() - t0, "subset": expected, "failures": failures}


def _time_mode(mode: str, device: torch.device, size: CheckSize, data: Any, workdir: Path,
               log: Callable[[str], None]) -> dict[str, Any]:
    """CE and the meta step at each SL in ``mode``, timed in interleaved rounds; per case its ms/step
    and first-steps time (compilation), per SL its ratio to the CE step of the same rounds."""
    from curvebench.perf.bench import MethodCase
    from curvebench.perf.timing import Clock, interleaved

    out: dict[str, Any] = {"cases": {}}
    cases: list[MethodCase] = []
    plans: list[tuple[str, str, tuple[str, ...] | str]] = [("ce", "ce", mode_overrides(mode, False, device, size))]
    meta_over = mode_overrides(mode, True, device, size)
    plans += [(f"SL{sl}", META_METHOD, meta_over if isinstance(meta_over, str) else (*meta_over, f"method.slmo={sl}"))
              for sl in SLS]
    clock = Clock(device)
    for label, method, overrides in plans:
        if isinstance(overrides, str):
            out["cases"][label] = {"skipped": overrides}
            continue
        case = MethodCase(method, size.model, data, device, workdir / f"{mode}-{label}", batch_size=size.batch_size,
                          overrides=overrides, label=f"{mode} {label}")
        case.build()
        clock.sync()
        t0 = time.perf_counter()
        for _ in range(size.warmup):
            case.run_step(lambda name: None)
        clock.sync()
        out["cases"][label] = {"first_steps_s": time.perf_counter() - t0, "overrides": list(overrides)}
        log(f"  {mode} {label}: built, {size.warmup} first step(s) in {out['cases'][label]['first_steps_s']:.1f} s")
        cases.append(case)
    if not cases:
        return out
    t = interleaved(cases, device, rounds=size.rounds, steps=size.steps, warmup=0)
    for case in cases:
        label = case.name.split(" ", 1)[1]
        c = t.cases[case.name]
        out["cases"][label].update(ms_per_step=1000 * c.median, iqr_ms=[1000 * x for x in c.iqr],
                                   images_per_second=c.images_per_second)
        if label == "ce":
            out["ce_batches_per_epoch"] = case.ctx.train.num_batches(case.batch_size, None, case.phase.drop_last)
    if "ms_per_step" in out["cases"]["ce"]:
        for sl in SLS:
            name = f"{mode} SL{sl}"
            if name in t.cases:
                out["cases"][f"SL{sl}"]["ratio_to_ce"] = t.ratio(name, f"{mode} ce")[0]
    del cases
    return out


def steps_section(device: torch.device, size: CheckSize, log: Callable[[str], None]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``ce_epoch`` and ``meta_ce``, from one timing per mode."""
    from curvebench.perf.bench import scratch_dir
    from curvebench.perf.synthetic import synthetic_data

    data = synthetic_data(device, n_train=size.train_size, n_meta=size.meta_size, n_test=size.test_size)
    modes: dict[str, Any] = {}
    with scratch_dir() as wd:
        for mode in MODES:
            log(f"steps: {mode}")
            try:
                modes[mode] = _time_mode(mode, device, size, data, wd, log)
            finally:
                import torch._dynamo

                torch._dynamo.reset()  # the next mode compiles afresh
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    ce_epoch: dict[str, Any] = {"model": size.model, "batch_size": size.batch_size, "epoch_images": size.train_size}
    eager_ce = modes["eager"]["cases"]["ce"].get("ms_per_step")
    meta_ce: dict[str, Any] = {"method": META_METHOD, "model": size.model, "batch_size": size.batch_size}
    for mode, m in modes.items():
        ce = m["cases"]["ce"]
        if "ms_per_step" in ce:
            ce_epoch[mode] = {"epoch_s": ce["ms_per_step"] / 1000 * m["ce_batches_per_epoch"],
                              "ms_per_step": ce["ms_per_step"], "first_steps_s": ce["first_steps_s"],
                              "batches_per_epoch": m["ce_batches_per_epoch"]}
        else:
            ce_epoch[mode] = ce.get("skipped", NOT_AVAILABLE)
        row: dict[str, Any] = {}
        for sl in SLS:
            c = m["cases"][f"SL{sl}"]
            if "ms_per_step" not in c:
                row[f"SL{sl}"] = c.get("skipped", NOT_AVAILABLE)
                continue
            row[f"SL{sl}"] = {"ratio_to_ce_same_mode": c.get("ratio_to_ce"),
                              "ratio_to_eager_ce": c["ms_per_step"] / eager_ce if eager_ce else None,
                              "ms_per_step": c["ms_per_step"], "first_steps_s": c["first_steps_s"]}
        meta_ce[mode] = row
    return ce_epoch, meta_ce


def concurrent_section(device: torch.device, size: CheckSize, log: Callable[[str], None]) -> dict[str, Any]:
    from curvebench.perf.concurrent import run_concurrent

    runs = {}
    for n in size.concurrent:
        log(f"concurrent: {n} process(es), {size.concurrent_s:.0f} s")
        r = run_concurrent(n, method="ce", model=size.model, device=str(device), batch_size=size.batch_size,
                           duration=size.concurrent_s, timeout=600)
        runs[str(n)] = {"aggregate_images_per_second": r["aggregate_images_per_second"],
                        "per_process": [w["images_per_second"] for w in r["workers"]]}
    one = runs[str(size.concurrent[0])]["aggregate_images_per_second"] if size.concurrent[0] == 1 else None
    for r in runs.values():
        r["speedup"] = r["aggregate_images_per_second"] / one if one else None
    return {"method": "ce", "model": size.model, "batch_size": size.batch_size, "duration_s": size.concurrent_s,
            "processes": runs}


def extrapolated_section(device: torch.device, size: CheckSize, log: Callable[[str], None]) -> dict[str, Any]:
    from curvebench.engine.method import METHODS
    from curvebench.perf.bench import scratch_dir
    from curvebench.perf.extrapolate import estimate_run, table1_hours
    from curvebench.perf.synthetic import synthetic_data

    methods = list(size.extrapolate_methods) if size.extrapolate_methods else METHODS.names()
    data = synthetic_data(device, n_train=size.train_size, n_meta=size.meta_size, n_test=size.test_size)
    overrides = [] if size is FULL else [f"recipe.batch_size={size.batch_size}"]
    runs: dict[str, Any] = {}
    with scratch_dir() as wd:
        for m in methods:
            log(f"extrapolated: {m}")
            try:
                est = estimate_run(m, size.model, data, device, wd, epochs=1, limit_batches=size.limit_batches,
                                   overrides=overrides, warmup_batches=1, log=lambda s: None)
                runs[m] = {"run_hours": est.total_s / 3600, "table1_hours": table1_hours(est, seeds=TABLE1_SEEDS),
                           "phases": [p.name for p in est.phases]}
            except Exception as err:  # noqa: BLE001 - a method that cannot run on synthetic data is reported
                runs[m] = {"skipped": f"{type(err).__name__}: {err}"}
    total = sum(r["table1_hours"] for r in runs.values() if "table1_hours" in r)
    return {"model": size.model, "train_size": size.train_size, "limit_batches": size.limit_batches,
            "seeds": TABLE1_SEEDS, "runs": runs, "table1_hours_serial": total,
            "note": "CurveNet's probe is not included (synthetic curves stand in for it)"}


# -- targets and output -------------------------------------------------------------------------
def targets(out: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """Each target with its value and verdict (``ok`` None: not decided here, e.g. on a CPU)."""
    gpu = device.type == "cuda"
    rows: list[dict[str, Any]] = []

    def add(name: str, value: Any, limit: float) -> None:
        number = isinstance(value, (int, float)) and not math.isnan(value)
        rows.append({"name": name, "value": value if number else (value or NOT_AVAILABLE), "target": f"<= {limit}",
                     "ok": (value <= limit) if (gpu and number) else None})

    def part(name: str) -> dict[str, Any]:  # a section that crashed or was skipped has no figures
        value = out.get(name)
        return value if isinstance(value, dict) else {}

    graphed = part("ce_epoch").get("graphed")
    add("CE epoch, CUDA graphs (s)", graphed["epoch_s"] if isinstance(graphed, dict) else graphed, TARGET_CE_EPOCH_S)
    for mode in MODES:
        row = part("meta_ce").get(mode, {})
        for sl in SLS:
            cell = row.get(f"SL{sl}")
            value = cell.get("ratio_to_ce_same_mode") if isinstance(cell, dict) else cell
            add(f"meta / CE at SL {sl}, {mode}", value, TARGET_META_CE[sl])
    ext, conc = part("extrapolated"), part("concurrent")
    speedups = [(int(n), r["speedup"]) for n, r in conc.get("processes", {}).items() if r.get("speedup")]
    n, best = max(speedups, key=lambda x: x[1], default=(1, 1.0))
    best = max(best, 1.0)
    add(f"Table 1 ({TABLE1_SEEDS} seeds), GPU-hours with {n} concurrent run(s) (x{best:.2f})",
        ext["table1_hours_serial"] / best if ext else None, TARGET_TABLE1_HOURS)
    return rows


def _cell(v: Any, digits: int = 2) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return "-" if v is None else str(v)


def _verdict(ok: bool | None) -> str:
    return "info" if ok is None else ("PASS" if ok else "FAIL")


def markdown(out: dict[str, Any]) -> str:
    env = out["environment"]
    lines = [f"# GPU check: {env.get('gpu', env.get('cpu'))}", "",
             f"`{env['command']}`, {env['date']}, torch {env['torch']}, {out['size']}-size"
             f" ({out['wall_s']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in out["section_s"].items()) + ").",
             "", "## Targets", "", "| target | value | limit | verdict |",
             "|---|---|---|---|"]
    lines += [f"| {t['name']} | {_cell(t['value'])} | {t['target']} | {_verdict(t['ok'])} |" for t in out["targets"]]
    smoke = out.get("smoke")
    lines += ["", "## Smoke suite", ""]
    if isinstance(smoke, dict):
        lines += [f"{len(smoke['methods'])} runs in {smoke['wall_s']:.0f} s"
                  + (f" (subset: {', '.join(smoke['subset'])})" if smoke["subset"] else " (every method)") + ".", "",
                  "| method | status | run s | top-1 |", "|---|---|---|---|"]
        lines += [f"| {m} | {r['status']} | {_cell(r['wall_s'], 1)} | {_cell(r['top1_last'])} |"
                  for m, r in smoke["methods"].items()]
        lines += [f"- failure: {f}" for f in smoke["failures"]]
    ce = out.get("ce_epoch")
    lines += ["", "## CE epoch", ""]
    if isinstance(ce, dict):
        lines += [f"{ce['model']}, batch {ce['batch_size']}, {ce['epoch_images']} images per epoch.", "",
                  "| mode | epoch s | ms/step | first steps s |", "|---|---|---|---|"]
        for mode in MODES:
            c = ce.get(mode)
            lines.append(f"| {mode} | " + (f"{c['epoch_s']:.2f} | {c['ms_per_step']:.1f} | {c['first_steps_s']:.1f} |"
                                           if isinstance(c, dict) else f"{c} | | |"))
    meta = out.get("meta_ce")
    lines += ["", "## Meta / CE step time", ""]
    if isinstance(meta, dict):
        lines += [f"{meta['method']}'s whole meta step over the CE step, {meta['model']}, batch {meta['batch_size']}.",
                  "", "| mode | SL | x CE (same mode) | x eager CE | ms/step | first steps s |",
                  "|---|---|---|---|---|---|"]
        for mode in MODES:
            for sl in SLS:
                c = meta.get(mode, {}).get(f"SL{sl}")
                lines.append(f"| {mode} | {sl} | " + (
                    f"{_cell(c['ratio_to_ce_same_mode'])} | {_cell(c['ratio_to_eager_ce'])} | {c['ms_per_step']:.1f} "
                    f"| {c['first_steps_s']:.1f} |" if isinstance(c, dict) else f"{c} | | | |"))
    conc = out.get("concurrent")
    lines += ["", "## Concurrent runs", ""]
    if isinstance(conc, dict):
        lines += [f"{conc['method']} {conc['model']}, batch {conc['batch_size']}, {conc['duration_s']:.0f} s each.", "",
                  "| processes | aggregate img/s | x one process |", "|---|---|---|"]
        lines += [f"| {n} | {r['aggregate_images_per_second']:.0f} | {_cell(r['speedup'])} |"
                  for n, r in conc["processes"].items()]
    ext = out.get("extrapolated")
    lines += ["", "## Extrapolated runs", ""]
    if isinstance(ext, dict):
        lines += [f"{ext['model']}, {ext['train_size']} training images, {ext['limit_batches']} batch(es) per sample "
                  f"epoch; {ext['note']}.", "", f"| method | cifar10 run h | Table 1 h ({ext['seeds']} seeds) |",
                  "|---|---|---|"]
        for m, r in ext["runs"].items():
            lines.append(f"| {m} | " + (f"{r['run_hours']:.2f} | {r['table1_hours']:.1f} |" if "run_hours" in r
                                        else f"skipped: {r['skipped']} | |"))
        lines.append(f"| all, one after another | | {ext['table1_hours_serial']:.1f} |")
    if out["errors"]:
        lines += ["", "## Errors", ""] + [f"- {name}: {err.splitlines()[0]}" for name, err in out["errors"].items()]
    for name in SECTIONS:  # a section that crashed still has its heading
        if not isinstance(out.get(name), dict):
            lines.append(f"\n(section {name}: {out.get(name, 'not run')})")
    return "\n".join(lines) + "\n"


def run(device: torch.device, out_dir: Path, env: dict[str, Any], log: Callable[[str], None],
        sections: Sequence[str] = SECTIONS) -> int:
    """Every section (a crash is recorded and the others still run); writes the JSON and markdown.
    Returns 1 when a section crashed or a smoke run failed, else 0 (targets never fail it)."""
    size = size_for(device)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"environment": env, "size": "full" if size is FULL else "reduced", "errors": {},
                           "section_s": {}}

    def section(name: str, fn: Callable[[], Any]) -> None:
        if name not in sections:
            out[name] = "skipped (--gpu-check-sections)"
            return
        start = time.perf_counter()
        try:
            out[name] = fn()
        except Exception:  # noqa: BLE001 - recorded; the other sections still run
            out["errors"][name] = traceback.format_exc()
            out[name] = "crashed: " + out["errors"][name].strip().splitlines()[-1]
            log(f"{name} crashed:\n{out['errors'][name]}")
        out["section_s"][name] = time.perf_counter() - start

    section("smoke", lambda: smoke_section(device, size, log))
    if "ce_epoch" in sections or "meta_ce" in sections:
        start = time.perf_counter()
        try:
            out["ce_epoch"], out["meta_ce"] = steps_section(device, size, log)
        except Exception:  # noqa: BLE001
            err = traceback.format_exc()
            out["errors"]["ce_epoch"] = out["errors"]["meta_ce"] = err
            out["ce_epoch"] = out["meta_ce"] = "crashed: " + err.strip().splitlines()[-1]
            log(f"steps crashed:\n{err}")
        out["section_s"]["ce_epoch+meta_ce"] = time.perf_counter() - start
    else:
        out["ce_epoch"] = out["meta_ce"] = "skipped (--gpu-check-sections)"
    section("concurrent", lambda: concurrent_section(device, size, log))
    section("extrapolated", lambda: extrapolated_section(device, size, log))
    if isinstance(out["smoke"], dict) and out["smoke"]["failures"]:
        out["errors"]["smoke"] = "; ".join(out["smoke"]["failures"])
    out["targets"] = targets(out, device)
    out["wall_s"] = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON_FILE).write_text(json.dumps(out, indent=1, default=str) + "\n")
    text = markdown(out)
    (out_dir / MARKDOWN_FILE).write_text(text)
    print(text, flush=True)
    for t in out["targets"]:
        print(f"target {t['name']}: {_cell(t['value'])} (limit {t['target']}) {_verdict(t['ok'])}")
    print(f"wrote {out_dir / JSON_FILE} and {out_dir / MARKDOWN_FILE} in {out['wall_s']:.0f} s", flush=True)
    return 1 if out["errors"] else 0
