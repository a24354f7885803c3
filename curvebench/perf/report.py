"""Tables, target checks and JSON for ``curvebench perf``."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
from typing import Any, Sequence

import torch
from tabulate import tabulate

from curvebench.engine.phase_timer import FUSED_META
from curvebench.engine.phase_timer import PHASES as CURVENET_PHASES
from curvebench.perf.bench import COMPILED, ModelReport

META_PHASES = ("meta_loss", *CURVENET_PHASES)  # as the methods mark them (engine/phase_timer.py)
PHASES = ("meta_batch", *META_PHASES, FUSED_META)  # meta_batch: the MW-Net reference steps; meta_step: compiled


def environment(device: torch.device, threads: int | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads() if threads is None else threads, "loadavg": os.getloadavg(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def _ms(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{1000 * x:.1f}"


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _meta_cases(rep: ModelReport) -> dict[int, str]:
    """SL -> case name of the meta step at each SLMO level: the first method with an SL sweep
    (``curvenet SL0``...)."""
    out: dict[int, str] = {}
    for name, r in rep.results.items():
        if r.skipped or " SL" not in name or name.endswith(COMPILED):
            continue
        out.setdefault(int(name.rsplit("SL", 1)[1]), name)
    return out


def compiled_checks(rep: ModelReport) -> list[dict[str, Any]]:
    """``--compiled``: each compiled case's speed-up over its eager twin, its first step (compile)
    time, and the compiled meta step over the eager and over the compiled CE step at SL 0 / SL 3."""
    t, base, out = rep.timing, rep.baseline, []
    if not t:
        return out
    for name, r in rep.results.items():
        twin = name.removesuffix(COMPILED)
        if not name.endswith(COMPILED) or r.skipped or name not in t.cases or twin not in t.cases:
            continue
        m, lo, hi = t.ratio(twin, name)
        out.append({"name": f"speed-up {twin}: eager / compiled", "value": m, "iqr": [lo, hi],
                    "target": ">= 3 for a host-bound step (digits_cnn, resnet8 at batch 16-64)"
                    if "SL" in name or rep.results[twin].kind == "meta" else "info", "ok": None})
        out.append({"name": f"first step {name} (compile, s)", "value": r.first_step_s, "target": "info",
                    "ok": None})
    for sl, name in _meta_cases(rep).items():
        if sl not in (0, 3) or name + COMPILED not in t.cases or not base:
            continue
        m, lo, hi = t.ratio(name + COMPILED, base)
        out.append({"name": f"time {name}{COMPILED} / {base} (eager)", "value": m, "iqr": [lo, hi],
                    "target": "<= 3.0 at SL 0 (issue 14, this CPU)" if sl == 0 else "info", "ok": None})
        if base + COMPILED in t.cases:
            m, lo, hi = t.ratio(name + COMPILED, base + COMPILED)
            out.append({"name": f"time {name}{COMPILED} / {base}{COMPILED}", "value": m, "iqr": [lo, hi],
                        "target": "info", "ok": None})
    return out


def model_table(rep: ModelReport) -> str:
    t, base = rep.timing, rep.baseline
    rows = []
    for name, r in rep.results.items():
        if r.skipped:
            continue
        c = t.cases.get(name) if t else None
        ratio = t.ratio(name, base) if (t and base and c) else (math.nan,) * 3
        flop_ratio = r.gflop_per_image / rep.results[base].gflop_per_image if base else math.nan
        iqr = f"{_ms(c.iqr[0])}-{_ms(c.iqr[1])}" if c else "-"
        rows.append([name, r.kind, r.batch_size, _ms(c.median) if c else "-", iqr,
                     f"{c.images_per_second:.0f}" if c else "-", _f(ratio[0], 2), _f(r.gflop_per_image),
                     _f(flop_ratio, 2), r.ops, r.syncs])
    headers = ["step", "kind", "batch", "ms/step", "IQR ms", "img/s", f"time x {base}", "GFLOP/img",
               f"FLOPs x {base}", "ATen ops", "host syncs"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def phase_table(rep: ModelReport) -> str:
    t = rep.timing
    rows = []
    for name, r in rep.results.items():
        if r.skipped or not any(p in r.flops for p in META_PHASES):
            continue
        c = t.cases.get(name) if t else None
        times = [_ms(c.phase_median(p)) if c else "-" for p in PHASES]
        flops = [_f(r.phase_gflop(p)) for p in META_PHASES]
        rows.append([name, *times, *flops])
    if not rows:
        return ""
    headers = ["meta step", *(f"{p} ms" for p in PHASES), *(f"{p} GF/img" for p in META_PHASES)]
    return tabulate(rows, headers=headers, disable_numparse=True)


def skipped_lines(rep: ModelReport) -> list[str]:
    return [f"  skipped {n}: {r.skipped}" for n, r in rep.results.items() if r.skipped]


def sync_lines(rep: ModelReport) -> list[str]:
    return [f"  {n}: {r.syncs} host syncs/step at {r.sync_sites}" for n, r in rep.results.items()
            if not r.skipped and r.syncs]


TARGET_MODEL = "resnet32"  # the targets (PERFORMANCE.md §9.8) are set for ResNet-32


def checks(rep: ModelReport, device: torch.device) -> list[dict[str, Any]]:
    """The targets (PERFORMANCE.md §9.8) that this measurement can decide, each with its value and verdict
    (other models than ResNet-32 get the same figures as information)."""
    out: list[dict[str, Any]] = []
    if rep.model != TARGET_MODEL:
        return [{**c, "target": f"info ({TARGET_MODEL} target: {c['target']})" if c["ok"] is not None else c["target"],
                 "ok": None} for c in checks(ModelReport(TARGET_MODEL, rep.device, rep.batch_size, rep.results,
                                                         rep.timing, rep.baseline), device)]
    base, t = rep.baseline, rep.timing
    meta = _meta_cases(rep)
    if base:
        plain = rep.results[base].gflop_per_image
        for sl, limit in ((0, 4.4), (3, 2.6)):
            if sl in meta:
                v = rep.results[meta[sl]].gflop_per_image / plain
                out.append({"name": f"FLOPs {meta[sl]} / {base}", "value": v, "target": f"<= {limit}",
                            "ok": v <= limit})
    if 0 in meta and 3 in meta:
        f0, f3 = rep.results[meta[0]].flops, rep.results[meta[3]].flops
        if f3.get("meta_backward"):
            v = f0.get("meta_backward", 0.0) / f3["meta_backward"]
            out.append({"name": "FLOPs meta_backward SL0 / SL3", "value": v,
                        "target": "info (PERFORMANCE.md §9.3: 3.16)", "ok": None})
        if t and meta[0] in t.cases and meta[3] in t.cases:
            m, lo, hi = t.ratio(meta[0], meta[3], "meta_backward", "meta_backward")
            out.append({"name": "time meta_backward SL0 / SL3", "value": m, "iqr": [lo, hi],
                        "target": ">= 3 (paper Table 8: 5.71)", "ok": m >= 3})
            m, lo, hi = t.ratio(meta[0], meta[3])
            out.append({"name": "time whole step SL0 / SL3", "value": m, "iqr": [lo, hi], "target": "info",
                        "ok": None})
    if t and base:
        for sl, limit in ((0, 5.0), (3, 3.0)):
            if sl in meta and meta[sl] in t.cases:
                m, lo, hi = t.ratio(meta[sl], base)
                gpu = device.type == "cuda"
                out.append({"name": f"time {meta[sl]} / {base}", "value": m, "iqr": [lo, hi],
                            "target": f"<= {limit}" + ("" if gpu else " on a GPU (info on CPU)"),
                            "ok": (m <= limit) if gpu else None})
    out += compiled_checks(rep)
    ref, fun = "mwnet reference (deepcopy)", "mwnet functional (ours)"
    if t and ref in t.cases and fun in t.cases:
        m, lo, hi = t.ratio(ref, fun)
        out.append({"name": "time mwnet reference / functional", "value": m, "iqr": [lo, hi], "target": "> 1",
                    "ok": m > 1})
    return out


def check_lines(items: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for c in items:
        verdict = "" if c["ok"] is None else ("PASS" if c["ok"] else "FAIL")
        iqr = f" (IQR {c['iqr'][0]:.2f}-{c['iqr'][1]:.2f})" if c.get("iqr") else ""
        lines.append(f"  {c['name']}: {c['value']:.2f}{iqr}  target {c['target']}  {verdict}".rstrip())
    return lines


def format_report(rep: ModelReport, device: torch.device) -> str:
    t = rep.timing
    head = f"== {rep.model}, batch {rep.batch_size}, {rep.device}"
    if t:
        loads = [x[0] for x in t.loadavg]
        head += (f": {t.rounds} interleaved rounds x {t.steps} step(s), medians; load avg (1 min) "
                 f"{min(loads):.2f}-{max(loads):.2f}; {t.wall_s:.0f} s")
    parts = [head, model_table(rep)]
    pt = phase_table(rep)
    if pt:
        parts += ["", "meta-step phases (ms: median over rounds; GF/img: GFLOP per image)", pt]
    extra = skipped_lines(rep)
    if extra:
        parts += ["", "skipped:", *extra]
    syncs = sync_lines(rep)
    if syncs:
        parts += ["", "host syncs inside train_step (the engine forbids them):", *syncs]
    parts += ["", "checks:", *check_lines(checks(rep, device))]
    return "\n".join(parts)


def to_json(rep: ModelReport, device: torch.device) -> dict[str, Any]:
    t = rep.timing
    cases = {}
    for name, r in rep.results.items():
        entry: dict[str, Any] = {"group": r.group, "kind": r.kind, "batch_size": r.batch_size,
                                 "skipped": r.skipped or None, "gflop_per_image": r.gflop_per_image,
                                 "gflop_per_image_phases": {p: r.phase_gflop(p) for p in r.flops},
                                 "host_syncs_per_step": r.syncs, "sync_sites": r.sync_sites, "aten_ops_per_step": r.ops}
        if t and name in t.cases:
            c = t.cases[name]
            entry.update(seconds_per_step_rounds=c.seconds, seconds_median=c.median, iqr=list(c.iqr),
                         images_per_second=c.images_per_second,
                         phase_seconds_median={p: c.phase_median(p) for p in c.phase_names()})
            if rep.baseline:
                entry["time_ratio_to_baseline"] = list(t.ratio(name, rep.baseline))
        cases[name] = entry
    out = {"model": rep.model, "device": rep.device, "baseline": rep.baseline, "cases": cases,
           "checks": checks(rep, device)}
    if t:
        out.update(rounds=t.rounds, steps=t.steps, loadavg=t.loadavg, wall_s=t.wall_s)
    return out
