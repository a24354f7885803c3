"""The corruption protocol: meta set -> imbalance -> noise (CurveNet's order), as a pure function.

``make_split(data, spec)`` depends on nothing but the dataset (through its labels and
fingerprint) and the spec. Randomness comes only from ``numpy.random.Generator`` objects seeded by
``SeedSequence(spec.data_seed).spawn(4)``, one independent child stream per stage:

0. meta: one permutation per class; its first k rows form the meta set (so meta sets for
   different k are nested);
1. imbalance: one permutation of each class's pool; a class keeps its first n_i rows, so for one
   data_seed and k the subsets of different imbalance factors are nested, and none depends on
   the noise model or rate;
2. noise targets: the fixed per-class targets of ``flip`` / ``flip2``;
3. noise draws: two uniforms for every row of the original training set, drawn up front, so a
   sample's draw does not depend on which subset it landed in (common random numbers: a higher
   rate corrupts a superset of the samples, with the same corrupted labels).

Hence all cells of a grid that share a data_seed share the meta set and nested imbalance subsets.

Protocol (``order: imbalance_noise``, the default, as in CurveNet's feeder):
1. take k clean images per class from the original training set (k = ``meta_per_class``;
   0: no meta set) and remove them from the pool; with ``pool_per_class`` c > 0 the pool of a
   class is the next c rows of the same permutation (pools of different c are nested);
2. subsample each class of the pool to the profile's count (``imbalance.class_counts``), with
   n_max = the smallest class pool;
3. corrupt the labels of the result (``noise``); ``unif_prior`` uses the class prior of that
   imbalanced set.
``order: noise_imbalance`` (HAR) corrupts the whole pool first and then subsamples each class of
the *noisy* labels to min(n_i, images with that noisy label), n_i computed as above.

For ``ImageFiles`` (real-world noise) the only supported spec takes no synthetic noise and no
imbalance; the meta set is k per class of the dataset's declared clean subset (k = -1: all of it).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from typing import Any

import numpy as np

from curvebench.data.imbalance import class_counts
from curvebench.data.noise import build_noise_model, draw_noisy_labels, noise_stats
from curvebench.data.types import IMBALANCE_PROFILES, NOISE_MODELS, ORDERS, ImageArrays, ImageFiles, Split, SplitSpec
from curvebench.errors import DataError

SPLIT_FORMAT = "curvebench-split/1"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def validate_spec(spec: SplitSpec) -> None:
    """Checks that need no data; raises DataError saying what to change."""
    def bad(msg: str) -> DataError:
        return DataError(f"invalid split spec for dataset {spec.dataset!r}: {msg}")

    if not isinstance(spec.meta_per_class, int) or isinstance(spec.meta_per_class, bool) or spec.meta_per_class < -1:
        raise bad(
            f"meta_per_class must be an integer >= 0 (or -1: all of a declared clean set), got {spec.meta_per_class!r}"
        )
    if spec.imbalance_profile not in IMBALANCE_PROFILES:
        choices = ", ".join(IMBALANCE_PROFILES)
        raise bad(f"unknown imbalance_profile {spec.imbalance_profile!r}; choose one of {choices}")
    f = spec.imbalance_factor
    if not isinstance(f, (int, float)) or not math.isfinite(f) or f < 1:
        raise bad(
            f"imbalance_factor is IF = n_max / n_min and must be >= 1, got {f!r} "
            "(for a ratio r = n_min / n_max = 0.01, write imbalance_factor=100)"
        )
    if spec.imbalance_profile == "none" and f != 1:
        raise bad(f"imbalance_profile 'none' takes imbalance_factor 1, got {f!r}; use 'exp' or 'step' for IF > 1")
    t = spec.step_tail_fraction
    if not isinstance(t, (int, float)) or not 0 <= t <= 1:
        raise bad(f"step_tail_fraction must lie in [0, 1], got {spec.step_tail_fraction!r}")
    if spec.noise_model not in NOISE_MODELS:
        raise bad(f"unknown noise_model {spec.noise_model!r}; choose one of {', '.join(NOISE_MODELS)}")
    p = spec.noise_rate
    if not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise bad(f"noise_rate must lie in [0, 1), got {p!r}")
    if spec.noise_model == "none" and p != 0:
        raise bad(f"noise_model 'none' takes noise_rate 0, got {p!r}; pick a noise model for p > 0")
    if spec.order not in ORDERS:
        raise bad(f"unknown order {spec.order!r}; choose one of {', '.join(ORDERS)}")
    if not isinstance(spec.data_seed, int) or isinstance(spec.data_seed, bool) or spec.data_seed < 0:
        raise bad(f"data_seed must be an integer >= 0, got {spec.data_seed!r}")
    c = spec.pool_per_class
    if not isinstance(c, int) or isinstance(c, bool) or c < 0:
        raise bad(f"pool_per_class must be an integer >= 0 (0 = no cap), got {c!r}")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deterministic .npz: stored (uncompressed) members in name order, fixed dates and modes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name], order="C"), version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _counts(labels: np.ndarray, k: int) -> list[int]:
    return [int(c) for c in np.bincount(labels[labels >= 0], minlength=k)]


def _public_source(source: dict[str, Any]) -> dict[str, Any]:
    """The dataset source without machine-specific paths (the manifest must be portable)."""
    return {key: value for key, value in sorted(source.items()) if key not in ("path", "root")}


def _finish(
    data: ImageArrays | ImageFiles,
    spec: SplitSpec,
    train_idx: np.ndarray,
    noisy: np.ndarray,
    clean: np.ndarray,
    meta_idx: np.ndarray,
    meta_labels: np.ndarray,
    extra: dict[str, Any],
) -> tuple[Split, bytes]:
    i64 = lambda a: np.ascontiguousarray(a, dtype=np.int64)  # noqa: E731
    train_idx, noisy, clean, meta_idx, meta_labels = map(i64, (train_idx, noisy, clean, meta_idx, meta_labels))
    blob = npz_bytes({
        "train_indices": train_idx,
        "noisy_labels": noisy,
        "clean_labels": clean,
        "meta_indices": meta_idx,
        "meta_labels": meta_labels,
        "fingerprint": np.array(data.fingerprint),
        "spec": np.array(json.dumps(spec.to_dict(), sort_keys=True)),
    })  # fmt: skip
    sha = hashlib.sha256(blob).hexdigest()
    k = data.num_classes
    manifest: dict[str, Any] = {
        "format": SPLIT_FORMAT,
        "spec": spec.to_dict(),
        "spec_hash": spec.spec_hash(),
        "tag": spec.tag(),
        "dataset": {
            "name": data.name,
            "official": bool(data.official),
            "fingerprint": data.fingerprint,
            "num_classes": k,
            "class_names": list(data.class_names),
            "source": _public_source(data.source),
        },
        "num_train": int(train_idx.size),
        "num_meta": int(meta_idx.size),
        "counts": {
            "train_clean": _counts(clean, k),
            "train_observed": _counts(noisy, k),
            "meta": _counts(meta_labels, k),
            **extra.pop("counts", {}),
        },
        **extra,
        "file": f"{sha}.npz",
        "sha256": sha,
    }
    split = Split(spec, train_idx, noisy, meta_idx, meta_labels, clean, manifest, sha)
    return split, blob


def _arrays_split(data: ImageArrays, spec: SplitSpec) -> tuple[Split, bytes]:
    labels = np.asarray(data.train_labels, dtype=np.int64)
    k_cls, n = data.num_classes, labels.size
    streams = np.random.SeedSequence(spec.data_seed).spawn(4)
    rng_meta, rng_imb, rng_targets, rng_draws = (np.random.default_rng(s) for s in streams)
    u, v = rng_draws.random(n), rng_draws.random(n)

    k = spec.meta_per_class
    if k < 0:
        raise DataError(
            "meta_per_class -1 (all of a declared clean set) applies to image-folder datasets only; use k >= 0"
        )
    by_class = [np.flatnonzero(labels == c) for c in range(k_cls)]
    sizes = [b.size for b in by_class]
    short = [c for c in range(k_cls) if sizes[c] <= k or sizes[c] == 0]
    if short:
        c = short[0]
        raise DataError(
            f"meta_per_class={k} is too large for {data.name}: class {c} ({data.class_names[c]}) has "
            f"{sizes[c]} training images and must keep at least one for training; "
            f"use meta_per_class <= {min(sizes) - 1}"
        )
    meta_parts, pools = [], []
    for c in range(k_cls):
        perm = rng_meta.permutation(by_class[c])
        meta_parts.append(perm[:k])
        pools.append(np.sort(perm[k : k + spec.pool_per_class] if spec.pool_per_class else perm[k:]))
    meta_idx = np.sort(np.concatenate(meta_parts))
    n_max = min(p.size for p in pools)
    targets = class_counts(spec.imbalance_profile, n_max, k_cls, spec.imbalance_factor, spec.step_tail_fraction)

    def corrupt(rows: np.ndarray) -> tuple[Any, np.ndarray]:
        clean_rows = labels[rows]
        prior = np.bincount(clean_rows, minlength=k_cls) / max(rows.size, 1)
        model = build_noise_model(
            spec.noise_model, spec.noise_rate, k_cls, prior, rng_targets, data.class_names, data.name
        )
        return model, draw_noisy_labels(model, clean_rows, u[rows], v[rows])

    if spec.order == "imbalance_noise":
        kept = [rng_imb.permutation(pools[c])[: targets[c]] for c in range(k_cls)]
        train_idx = np.sort(np.concatenate(kept))
        model, noisy = corrupt(train_idx)
    else:
        pool_idx = np.sort(np.concatenate(pools))
        model, pool_noisy = corrupt(pool_idx)
        kept = [rng_imb.permutation(pool_idx[pool_noisy == c])[: targets[c]] for c in range(k_cls)]
        train_idx = np.sort(np.concatenate(kept))
        noisy = pool_noisy[np.searchsorted(pool_idx, train_idx)]
    clean = labels[train_idx]
    extra = {
        "meta_source": "train",
        "counts": {"pool": [int(p.size) for p in pools], "target": [int(t) for t in targets]},
        "noise": noise_stats(model, clean, noisy, k_cls),
    }
    return _finish(data, spec, train_idx, noisy, clean, meta_idx, labels[meta_idx], extra)


def _files_split(data: ImageFiles, spec: SplitSpec) -> tuple[Split, bytes]:
    if spec.noise_model != "none" or spec.imbalance_profile != "none":
        raise DataError(
            f"{data.name} carries real-world label noise: use split.noise_model=none and "
            f"split.imbalance_profile=none (got {spec.noise_model}, {spec.imbalance_profile})"
        )
    if spec.pool_per_class:
        raise DataError(f"{data.name} takes no pool cap: use split.pool_per_class=0 (got {spec.pool_per_class})")
    rng_meta = np.random.default_rng(np.random.SeedSequence(spec.data_seed).spawn(4)[0])
    meta_labels_all = np.asarray(data.meta_labels, dtype=np.int64)
    k = spec.meta_per_class
    if k != 0 and meta_labels_all.size == 0:
        raise DataError(f"{data.name} has no declared clean subset; use split.meta_per_class=0")
    if k == -1:
        meta_idx = np.arange(meta_labels_all.size)
    else:
        parts = []
        for c in range(data.num_classes):
            rows = np.flatnonzero(meta_labels_all == c)
            if rows.size < k:
                raise DataError(
                    f"meta_per_class={k} is too large for {data.name}: its clean subset has {rows.size} images "
                    f"of class {c} ({data.class_names[c]}); use a smaller k, or -1 for the whole clean subset"
                )
            parts.append(rng_meta.permutation(rows)[:k])
        meta_idx = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    noisy = np.asarray(data.train_labels, dtype=np.int64)
    n = noisy.size
    clean = np.full(n, -1) if data.train_clean_labels is None else np.asarray(data.train_clean_labels, np.int64)
    known = clean >= 0
    extra = {
        "meta_source": "meta_files",
        "noise": {
            "model": "real-world",
            "nominal_rate": 0.0,
            "verified_train": int(known.sum()),
            "realised_rate_on_verified": (
                round(float((noisy[known] != clean[known]).mean()), 8) if known.any() else None
            ),
        },
    }
    return _finish(data, spec, np.arange(n), noisy, clean, meta_idx, meta_labels_all[meta_idx], extra)


def build_split(data: ImageArrays | ImageFiles, spec: SplitSpec) -> tuple[Split, bytes]:
    """The split and the exact bytes of its file (whose sha256 is ``split.sha256``)."""
    validate_spec(spec)
    if spec.dataset != data.name:
        raise DataError(f"the spec is for dataset {spec.dataset!r} but the data is {data.name!r}")
    if isinstance(data, ImageFiles):
        return _files_split(data, spec)
    return _arrays_split(data, spec)


def make_split(data: ImageArrays | ImageFiles, spec: SplitSpec) -> Split:
    """The split of ``data`` under ``spec``: pure, writes nothing."""
    return build_split(data, spec)[0]
