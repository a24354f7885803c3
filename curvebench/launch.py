"""Run a suite through a Hydra launcher: one launcher job per run (SLURM via submitit).

    curvebench cifar10 hydra/launcher=submitit_slurm hydra.launcher.partition=gpu \
        hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=600

The suite is planned as usual (``plan_suite``); its runs are then grouped into Hydra multiruns
whose sweeps are the suite's grid blocks (``method=a,b split.noise_rate=0.0,0.4 seed=1,2,3``, the
products that make up the planned runs, nothing more). Each job runs :func:`run_job_task`, which
plans its one run again from its overrides (so ``suite.method_overrides`` apply exactly as in the
in-process runner), claims it (``curvebench.workers``) and trains it. Run directories are the usual
function of the config, so re-submitting a suite skips finished runs and resumes interrupted ones,
and jobs and local workers can share a suite.

The hydra.launcher plugins wait for a sweep's jobs before returning, so the multiruns of a suite with
several grid blocks are submitted one after another. Jobs need the same file system as the
submitting shell: relative data/splits/results paths are made absolute before submission.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from curvebench.config import config_search_path
from curvebench.errors import ConfigError
from curvebench.suites import PlannedRun, _fmt, plan_suite, split_override

JOB_KEY = "curvebench_job"  # +curvebench_job.* overrides carry the job's options (not part of the run config)


def wants_launcher(overrides: Sequence[str]) -> bool:
    return any(o.startswith("hydra/launcher=") for o in overrides)


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(Hydra's own overrides: hydra/launcher=..., hydra.*; the suite's overrides)."""
    hydra = [o for o in overrides if o.startswith(("hydra/", "hydra."))]
    return hydra, [o for o in overrides if o not in hydra]


# -- sweeps -------------------------------------------------------------------------------------
def _products(points: list[dict[str, Any]], keys: list[str]) -> list[dict[str, list[Any]]]:
    """Split ``points`` (all with ``keys``) into cartesian products that cover exactly these points."""
    values = {k: list(dict.fromkeys(_fmt(p[k]) for p in points)) for k in keys}
    if math.prod(len(v) for v in values.values()) == len(points):
        return [values]
    key = next(k for k in keys if len(values[k]) > 1)
    out: list[dict[str, list[Any]]] = []
    for v in values[key]:
        out += _products([p for p in points if _fmt(p[key]) == v], keys)
    return out


def sweeps(runs: Sequence[PlannedRun]) -> list[list[str]]:
    """The suite's planned runs as a few sweeps (lists of ``key=v1,v2`` overrides), one per grid block."""
    by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in runs:
        by_keys.setdefault(tuple(r.grid), []).append(r.grid)
    result = []
    for keys, points in by_keys.items():
        for product in _products(points, list(keys)):
            result.append([f"{k}={','.join(vs)}" for k, vs in product.items()])
    return result


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_overrides(runs: Sequence[PlannedRun], suite_overrides: Sequence[str]) -> list[str]:
    """Overrides every job gets: the user's non-grid overrides, with absolute data/splits/results."""
    grid_keys = {k for r in runs for k in r.grid}
    extra = [o for o in suite_overrides if split_override(o)[0] not in grid_keys]
    given = {split_override(o)[0] for o in extra}
    paths = runs[0].config["paths"]
    for name in ("data", "splits", "results"):
        if f"paths.{name}" not in given or not Path(str(paths[name])).is_absolute():
            extra = [o for o in extra if split_override(o)[0] != f"paths.{name}"]
            extra.append(f"paths.{name}={_quote(str(Path(str(paths[name])).resolve()))}")
    return extra


# -- the job ------------------------------------------------------------------------------------
def plan_for_job(suite: str, overrides: Sequence[str]) -> PlannedRun:
    """The planned run of suite ``suite`` whose grid point the job's ``overrides`` name."""
    runs = plan_suite(suite, overrides)
    given = dict(split_override(o) for o in overrides)
    grid_keys = {k for r in runs for k in r.grid}
    keys = {k for k in given if k in grid_keys}
    matches = [r for r in runs if set(r.grid) == keys
               and all(len(given[k]) == 1 and _fmt(given[k][0]) == _fmt(v) for k, v in r.grid.items())]
    if len(matches) != 1:
        raise ConfigError(f"the job's overrides {list(overrides)} name {len(matches)} runs of suite {suite!r}, not one")
    return matches[0]


def run_job_task(cfg: DictConfig) -> str:
    """Hydra task function: plan, claim and train the one run this job's overrides name.

    Returns the outcome (done, skipped, failed, failed-before, running-elsewhere, lost, timed-out) or
    ``error: ...``; it never raises, so one bad job does not hide the other jobs' outcomes.
    """
    from hydra.core.hydra_config import HydraConfig

    from curvebench.run import run_planned, select_device
    from curvebench.slurm import TimedOut, job_signals, resume_note
    from curvebench.workers import try_claim

    try:
        with job_signals():  # SLURM: requeue on SIGUSR2, the claim released on SIGTERM
            task = list(HydraConfig.get().overrides.task)
            suite = next(o.split("=", 1)[1] for o in task if o.startswith("experiment="))
            overrides = [o for o in task if not o.startswith(("experiment=", f"+{JOB_KEY}."))]
            opts = cfg.get(JOB_KEY) or {}
            plan = plan_for_job(suite, overrides)
            device = select_device(str(plan.cfg.train.device))
            if plan.cfg.suite.requires_gpu and device.type != "cuda" and not plan.cfg.train.allow_cpu:
                raise ConfigError(f"suite {suite!r} needs a GPU and this job has none (ask the launcher for one, "
                                  "e.g. hydra.launcher.gpus_per_node=1, or pass --allow-cpu)")
            print(f"curvebench job: {plan.label} -> {plan.run_dir}", flush=True)
            claim = try_claim(plan.run_dir, worker=f"hydra job {HydraConfig.get().job.get('id', '')}".strip())
            if claim is None:
                return "running-elsewhere"
            try:
                with claim:
                    note = resume_note(plan.run_dir)
                    if note:
                        print(f"curvebench job: {note}", flush=True)
                    return run_planned(plan, progress=False, retry_failed=bool(opts.get("retry_failed", False)))
            except KeyboardInterrupt:
                if claim.lost:
                    return "lost"
                raise
    except TimedOut as err:  # the time limit, once more than hydra.launcher.max_num_timeout allows
        print(f"curvebench job: {err} The run keeps its checkpoint.", flush=True)
        return "timed-out"
    except Exception as err:  # noqa: BLE001 - reported to the submitting process as the job's outcome
        traceback.print_exc()
        return f"error: {type(err).__name__}: {err}"


# -- the submitting side ------------------------------------------------------------------------
def launch_suite(suite: str, overrides: Sequence[str], *, retry_failed: bool = False,
                 extra: Sequence[str] = ()) -> tuple[Counter[str], list[PlannedRun]]:
    """Plan ``suite`` and run it through the Hydra launcher named in ``overrides``; returns outcome counts."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    from curvebench import slurm

    hydra_overrides, suite_overrides = split_overrides(overrides)
    launcher = next(o.split("=", 1)[1] for o in hydra_overrides if o.startswith("hydra/launcher="))
    if launcher == "submitit_slurm":
        slurm.check_slurm()  # before anything is planned or written
    suite_overrides = list(suite_overrides) + list(extra)
    runs = plan_suite(suite, suite_overrides)
    slurm.expect_runs(runs)
    common = job_overrides(runs, suite_overrides)
    groups = sweeps(runs)
    given = {o.split("=", 1)[0] for o in hydra_overrides}
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    base = Path("multirun") / suite / stamp
    shown = next((o.split("=", 1)[1] for o in hydra_overrides if o.startswith("hydra.sweep.dir=")), str(base))
    print(f"suite {suite}: {len(runs)} runs in {len(groups)} sweep(s) through hydra/launcher={launcher}; "
          f"Hydra's job directories under {shown}", flush=True)

    version.setbase("1.3")
    counts: Counter[str] = Counter()
    for i, sweep in enumerate(groups):
        ovs = [f"experiment={suite}", *sweep, *common, f"+{JOB_KEY}.retry_failed={str(retry_failed).lower()}",
               *hydra_overrides]
        if "hydra.sweep.dir" not in given:
            ovs.append(f"hydra.sweep.dir={_quote(str(base / f'sweep-{i + 1}' if len(groups) > 1 else base))}")
        if "hydra.job.name" not in given:
            ovs.append(f"hydra.job.name=curvebench-{suite}")
        GlobalHydra.instance().clear()
        hydra = Hydra.create_main_hydra2(task_name=f"curvebench-{suite}",
                                         config_search_path=config_search_path())
        try:
            with slurm.patched_launcher():
                batches = hydra.multirun(config_name="config", task_function=run_job_task, overrides=ovs)
        finally:
            GlobalHydra.instance().clear()
        for ret in itertools.chain.from_iterable(batches):
            outcome = ret.return_value
            counts[outcome.split(":", 1)[0] if outcome.startswith("error") else outcome.removeprefix("ended: ")] += 1
            if outcome.startswith("error"):
                print(f"job {' '.join(ret.overrides)}: {outcome}", file=sys.stderr)
    return counts, runs
