"""One run, end to end: data and split -> method -> training -> ``result.json`` or ``failed.json``.

Runs are idempotent: the run directory is a function of the config; a finished run is skipped, an
interrupted one resumes from its last epoch checkpoint, a failed one is reported (and retried only
when asked, keeping the earlier failure record).
"""

from __future__ import annotations

import datetime as dt
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from curvebench.data import ImageFiles, Split, get_split, load_dataset, spec_from_config
from curvebench.engine.augment import Normalize
from curvebench.engine.checkpoint import remove_checkpoints
from curvebench.engine.context import CleanLabels, TrainContext
from curvebench.engine.data import ImageSet, MetaSampler, to_device_images
from curvebench.engine.evaluate import per_class_accuracy, shot_accuracy, shot_groups
from curvebench.engine.fastpath import apply_backend_flags, check_flags
from curvebench.engine.files import FileImageSet
from curvebench.engine.loop import Interrupted, NonFiniteLoss, Trainer, TrainOutcome
from curvebench.engine.method import METHODS
from curvebench.engine.records import environment, read_record, record_state, write_record
from curvebench.engine.rundir import RunDir
from curvebench.errors import ConfigError, DataError, RecordError
from curvebench.io import atomic_path, atomic_write_text, move_aside
from curvebench.methods import load_all_methods
from curvebench.suites import PlannedRun


def select_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a CUDA device on a machine without one is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but this machine has no usable CUDA device; "
                          "use --device cpu (or leave --device out: CUDA when available, else the CPU)")
    return torch.device(name)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _stream_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _set_aside_untrusted(run_dir: Path) -> None:
    """Before training: move away records that cannot be trusted (corrupt files, failures an earlier
    version recorded for causes outside training), keeping them, and say so."""
    files = RunDir(run_dir)
    for path in (files.result, files.failed):
        state = record_state(path)
        if state in ("corrupt", "setup"):
            tag = "corrupt" if state == "corrupt" else "setup"
            kept = move_aside(path, lambda n: f"{path.stem}.{tag}-{n}{path.suffix}")
            why = ("cannot be read or does not follow the record schema" if state == "corrupt"
                   else "records a failure outside training (data, config or paths), which is not permanent")
            print(f"note: {path} {why}; kept as {kept.name}, training the run again", file=sys.stderr)


def run_planned(plan: PlannedRun, *, progress: bool = False, retry_failed: bool = False,
                interrupt_after: int | None = None) -> str:
    """Train ``plan`` unless already finished. Returns "done", "skipped", "failed" or "failed-before".

    Causes outside training (data, split, config, paths) raise ConfigError/DataError and write no
    record; ``failed.json`` is written for failures of training itself only.
    """
    run_dir = plan.run_dir
    files = RunDir(run_dir)
    result_path, failed_path = files.result, files.failed
    _set_aside_untrusted(run_dir)
    if result_path.exists():
        record = read_record(result_path)
        if record["config_hash"] != plan.config_hash:
            raise RecordError(f"{result_path} belongs to another config (hash {record['config_hash'][:12]}); "
                              "move it away to re-run")
        return "skipped"
    if failed_path.exists():
        if not retry_failed:
            return "failed-before"
        move_aside(failed_path, lambda n: f"failed-{n}.json")

    run_dir.mkdir(parents=True, exist_ok=True)
    started = _now()
    built: dict[str, Any] = {}
    try:
        ctx, clean, split, generators, official = build_context(plan)
    except (ConfigError, DataError, RecordError):
        raise
    except Exception as err:  # e.g. an unreadable file, no space left: fixable, so no run record
        raise DataError(f"run {run_dir} could not be set up ({type(err).__name__}: {err}); fix the cause and "
                        "run the same command again (no run record was written)") from None
    atomic_write_text(files.config, OmegaConf.to_yaml(plan.cfg, resolve=True))
    built.update(split=split, official=official)
    try:
        try:
            method = METHODS.get(plan.cfg.method.name)(ctx, plan.cfg.method)
        except ConfigError as err:
            raise ConfigError(f"method {plan.cfg.method.name!r}: {err}") from None
        trainer = Trainer(ctx, method, clean, generators=generators, limit_batches=plan.cfg.train.limit_batches,
                          eval_batch_size=int(plan.cfg.train.eval_batch_size), progress=progress,
                          checkpoint=bool(plan.cfg.train.checkpoint), interrupt_after=interrupt_after)
        outcome = trainer.run()
    except NonFiniteLoss as err:
        _write_failure(plan, started, built, err.phase, err.epoch, str(err), traceback.format_exc())
        return "failed"
    except (Interrupted, ConfigError, DataError):  # not failures of training: no record, exit 2
        raise
    except Exception as err:  # a crash in one run must not lose the rest of a suite
        _write_failure(plan, started, built, "?", -1, f"{type(err).__name__}: {err}", traceback.format_exc())
        print(f"run {run_dir} failed: {type(err).__name__}: {err} (details in {failed_path})", file=sys.stderr)
        return "failed"
    _save_models(files.model, method)
    arrays = method.artifacts()
    if arrays:  # for figures: with the split's observed and clean labels (diagnostics only)
        arrays = {**arrays, "labels": split.noisy_labels, "clean_labels": split.clean_labels,
                  "is_noisy": (split.clean_labels >= 0) & (split.clean_labels != split.noisy_labels)}
        _save_npz(files.artifacts, arrays)
    atomic_write_text(files.history, _json(outcome.history))
    record = build_record(plan, ctx, split, official, outcome, started)
    write_record(result_path, record)
    remove_checkpoints(run_dir)  # the result replaces them
    return "done"


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n"


def _save_models(path: Path, method: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save({name: m.state_dict() for name, m in method.eval_models().items()}, tmp)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def build_context(plan: PlannedRun) -> tuple[TrainContext, CleanLabels, Split, dict[str, torch.Generator], bool]:
    """Load data and split, put them on the device, seed everything, and build the context."""
    load_all_methods()
    cfg = plan.cfg
    device = select_device(str(cfg.train.device))
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    torch.use_deterministic_algorithms(bool(cfg.train.deterministic))
    check_flags(cfg.train, device)
    apply_backend_flags(cfg.train, device)  # TF32, cuDNN autotuning
    data = load_dataset(cfg.dataset, Path(cfg.paths.data))
    spec = spec_from_config(cfg)
    split = get_split(data, spec, Path(cfg.paths.splits))

    seed = int(cfg.seed)
    torch.manual_seed(seed)
    generators = {name: torch.Generator(device=device).manual_seed(_stream_seed(seed, i))
                  for i, name in enumerate(("data", "meta", "method"))}
    k = data.num_classes
    cl = bool(cfg.train.channels_last)
    if isinstance(data, ImageFiles):  # too large for the device: decoded from files per batch
        aug = cfg.dataset.augment
        file_gen = torch.Generator().manual_seed(_stream_seed(seed, 3))
        generators["files"] = file_gen

        def file_set(files: list[str], labels: np.ndarray) -> FileImageSet:
            return FileImageSet(data.root, files, labels, k, list(cfg.dataset.normalize.mean),
                                list(cfg.dataset.normalize.std), file_gen, device, resize=int(cfg.dataset.resize),
                                crop=int(aug.crop), flip=bool(aug.flip), workers=int(cfg.dataset.get("workers", 8)),
                                channels_last=cl)

        train = file_set([data.train_files[i] for i in split.train_indices], split.noisy_labels)
        test = file_set(list(data.test_files), data.test_labels)
        meta_set = file_set([data.meta_files[i] for i in split.meta_indices], split.meta_labels) if split.num_meta else None
        image_shape = (3, int(aug.crop), int(aug.crop))
    else:
        norm = Normalize(list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std), device)
        aug = cfg.dataset.augment
        pad, flip, pad_mode = int(aug.pad), bool(aug.flip), str(aug.get("pad_mode", "reflect"))

        def image_set(images: np.ndarray, labels: np.ndarray, gen: torch.Generator) -> ImageSet:
            return ImageSet(to_device_images(images, device), torch.as_tensor(labels, dtype=torch.int64, device=device),
                            k, norm, pad, flip, gen, cl, pad_mode)

        train = image_set(data.train_images[split.train_indices], split.noisy_labels, generators["data"])
        test = image_set(data.test_images, data.test_labels, generators["data"])
        meta_set = (image_set(data.train_images[split.meta_indices], split.meta_labels, generators["meta"])
                    if split.num_meta else None)
        image_shape = data.image_shape
    meta = MetaSampler(meta_set) if meta_set is not None else None
    clean_t = torch.as_tensor(split.clean_labels, dtype=torch.int64, device=device)
    clean = CleanLabels(clean_t, (clean_t >= 0) & (clean_t != train.labels))  # -1: clean label unknown
    cache_dir = Path(cfg.paths.splits) / spec.dataset / "cache"
    ctx = TrainContext(cfg=cfg, device=device, num_classes=k, image_shape=image_shape, train=train, test=test,
                       meta=meta, generator=generators["method"], run_dir=plan.run_dir, cache_dir=cache_dir,
                       split_sha256=split.sha256, split=spec, seed=seed)
    return ctx, clean, split, generators, bool(data.official)


def _shot_counts(split: Split, num_classes: int) -> np.ndarray:
    """Training counts per class for the many/medium/few groups: clean ones where all are known."""
    labels = split.clean_labels if (split.clean_labels >= 0).all() else split.noisy_labels
    return np.bincount(labels, minlength=num_classes)


def _split_summary(split: Split, official: bool, num_classes: int) -> dict[str, Any]:
    known = split.clean_labels >= 0  # image-folder datasets know few clean labels
    clean_counts = np.bincount(split.clean_labels[known], minlength=num_classes)
    observed = np.bincount(split.noisy_labels, minlength=num_classes)
    realized = float(np.mean(split.clean_labels[known] != split.noisy_labels[known])) if known.any() else None
    return {"spec": split.spec.to_dict(), "official": official, "num_train": split.num_train,
            "num_meta": split.num_meta, "realized_noise_rate": realized,
            "train_counts_clean": clean_counts.tolist(), "train_counts_observed": observed.tolist()}


def _base_record(plan: PlannedRun, status: str, started: str, device: str) -> dict[str, Any]:
    c = plan.config
    return {
        "schema_version": 1, "status": status, "run_id": str(plan.run_dir), "suite": c["suite"]["name"],
        "method": c["method"]["name"], "dataset": c["dataset"]["name"], "model": c["model"]["name"],
        "recipe": c["recipe"]["name"], "seed": int(c["seed"]), "data_seed": int(c["split"]["data_seed"]),
        "config_hash": plan.config_hash, "config": c, "env": environment(device), "started": started,
        "finished": _now(),
    }


def build_record(plan: PlannedRun, ctx: TrainContext, split: Split, official: bool, outcome: TrainOutcome,
                 started: str) -> dict[str, Any]:
    final = [h for h in outcome.history if h["phase"] == outcome.final_phase and "top1" in h]
    top1 = [h["top1"] for h in final]
    best = int(np.argmax(top1))
    groups = shot_groups(_shot_counts(split, ctx.num_classes))
    extra_models: dict[str, Any] = {}
    for name in outcome.extra_last:
        series = [h["top1_extra"][name] for h in final]
        extra_models[name] = {"top1_last": series[-1], "top1_best": max(series), "top1_per_epoch": series}
    record = _base_record(plan, "done", started, str(ctx.device))
    record.update({
        "split_sha256": split.sha256,
        "split": _split_summary(split, official, ctx.num_classes),
        "metrics": {
            "top1_last": top1[-1], "top1_best": top1[best], "best_epoch": best, "epochs": len(top1),
            "top1_per_epoch": top1,
            "per_class_last": per_class_accuracy(outcome.confusion_last).tolist(),
            "confusion_last": outcome.confusion_last.tolist(),
            "shot_last": shot_accuracy(outcome.confusion_last, groups),
            "shot_groups": {**groups, "counts": "training counts (clean where known); many > 100, few < 20"},
            "extra_models": extra_models,
        },
        "phases": _phase_summary(outcome.history),
        "diagnostics": _diagnostics(outcome.history),
        "wall_time_s": outcome.wall_time_s,
    })
    return record


def _phase_summary(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    phases: dict[str, dict[str, Any]] = {}
    for h in history:
        p = phases.setdefault(h["phase"], {"name": h["phase"], "epochs": 0, "top1_per_epoch": [], "loss_per_epoch": []})
        p["epochs"] += 1
        p["loss_per_epoch"].append(h["loss"])
        if "top1" in h:
            p["top1_per_epoch"].append(h["top1"])
    return list(phases.values())


def _diagnostics(history: list[dict[str, Any]]) -> dict[str, Any]:
    per_epoch = [{"phase": h["phase"], "epoch": h["epoch"], **h["diagnostics"]} for h in history if "diagnostics" in h]
    return {"per_epoch": per_epoch, "last": per_epoch[-1] if per_epoch else {}}


def _write_failure(plan: PlannedRun, started: str, built: dict[str, Any], phase: str, epoch: int, cause: str,
                   tb: str) -> None:
    record = _base_record(plan, "failed", started, str(plan.cfg.train.device))
    split = built.get("split")
    if split is not None:
        summary = _split_summary(split, built["official"], int(plan.cfg.dataset.num_classes))
        split_sha = split.sha256
    else:  # failed before the split existed
        summary = {"spec": spec_from_config(plan.cfg).to_dict(), "official": False, "num_train": 0, "num_meta": 0,
                   "realized_noise_rate": None}
        split_sha = "0" * 64
    record.update({"split_sha256": split_sha, "split": summary,
                   "failure": {"phase": phase, "epoch": epoch, "cause": cause, "traceback": tb}})
    write_record(RunDir(plan.run_dir).failed, record)
