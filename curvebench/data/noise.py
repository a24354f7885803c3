"""Label-noise models as transition matrices T[true, noisy] (rows sum to 1).

Every model is written T = diag(1 - rho) + diag(rho) Q: a sample of true class i is corrupted
with probability rho_i, and a corrupted label is drawn from row Q[i]. Draws use two uniforms per
sample, u (corrupt if u < rho) and v (inverse CDF of Q[i]), both indexed by the sample's row in
the original training set. So, for one data_seed, a larger rate corrupts a superset of samples
and a sample's corrupted label does not depend on the rate (common random numbers).

- ``unif_prior`` (CurveNet code): Q[i] = the class prior of the set being corrupted; T = (1-p)I + p*prior.
  May keep the true label; keeps the class distribution in expectation.
- ``unif`` (MW-Net): Q[i] = 1/K, true class included; expected changed fraction p(K-1)/K.
- ``sym``: Q[i] = 1/(K-1) on every other class; never keeps the true label.
- ``flip``: one fixed other class per class, drawn once per split (noise-targets stream).
- ``flip2``: two distinct fixed other classes per class, p/2 each, drawn once per split.
- ``pairflip``: i -> (i+1) mod K.
- ``asym``: the CIFAR-10 map 2->0, 3->5, 5->3, 4->7, 9->1 with probability p; other classes clean.
- ``none``: no noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from curvebench.data.cifar import CIFAR10_CLASSES
from curvebench.data.types import NOISE_MODELS
from curvebench.errors import DataError

CIFAR10_ASYM = {2: 0, 3: 5, 5: 3, 4: 7, 9: 1}


@dataclass(frozen=True)
class NoiseModel:
    name: str
    rate: float
    rho: np.ndarray  # float [K], probability that a sample of class i is corrupted
    q: np.ndarray  # float [K, K], distribution of a corrupted label given the true class
    targets: Any = None  # flip / flip2 / asym targets, for the manifest

    @property
    def matrix(self) -> np.ndarray:
        """Nominal T[true, noisy]."""
        return np.diag(1.0 - self.rho) + self.rho[:, None] * self.q


def build_noise_model(
    name: str,
    rate: float,
    num_classes: int,
    prior: np.ndarray,
    rng_targets: np.random.Generator,
    class_names: tuple[str, ...],
    dataset: str,
) -> NoiseModel:
    """The nominal model; ``prior`` is the class distribution of the set to corrupt."""
    k = num_classes
    if name not in NOISE_MODELS:
        raise DataError(f"unknown noise_model {name!r}; choose one of {', '.join(NOISE_MODELS)}")
    rho = np.full(k, float(rate))
    q = np.zeros((k, k))
    targets: Any = None
    if name == "none":
        rho[:] = 0.0
        q = np.eye(k)
    elif name == "unif_prior":
        q[:] = prior[None, :]
    elif name == "unif":
        q[:] = 1.0 / k
    elif name in ("sym", "flip", "flip2", "pairflip") and k < (3 if name == "flip2" else 2):
        raise DataError(f"noise_model {name!r} needs at least {3 if name == 'flip2' else 2} classes")
    elif name == "sym":
        q[:] = 1.0 / (k - 1)
        np.fill_diagonal(q, 0.0)
    elif name in ("flip", "flip2"):
        m = 1 if name == "flip" else 2
        targets = []
        for i in range(k):
            others = np.array([j for j in range(k) if j != i])
            chosen = sorted(int(j) for j in rng_targets.choice(others, size=m, replace=False))
            q[i, chosen] = 1.0 / m
            targets.append(chosen[0] if m == 1 else chosen)
    elif name == "pairflip":
        q[np.arange(k), (np.arange(k) + 1) % k] = 1.0
        targets = [(i + 1) % k for i in range(k)]
    elif name == "asym":
        if tuple(class_names) != CIFAR10_CLASSES:
            raise DataError(
                "noise_model 'asym' is the CIFAR-10 class map (bird->airplane, cat<->dog, deer->horse, "
                f"truck->automobile) and needs CIFAR-10's classes; dataset {dataset!r} has {k} classes "
                f"({', '.join(class_names[:5])}{', ...' if k > 5 else ''}). Use sym, pairflip or flip instead."
            )
        q = np.eye(k)
        for src, dst in CIFAR10_ASYM.items():
            q[src] = 0.0
            q[src, dst] = 1.0
        rho = np.array([float(rate) if i in CIFAR10_ASYM else 0.0 for i in range(k)])
        targets = {str(s): d for s, d in sorted(CIFAR10_ASYM.items())}
    return NoiseModel(name=name, rate=float(rate), rho=rho, q=q, targets=targets)


def draw_noisy_labels(model: NoiseModel, clean: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Noisy labels for samples with true labels ``clean`` and uniforms ``u``, ``v`` (same length)."""
    noisy = clean.copy()
    hit = np.flatnonzero(u < model.rho[clean])
    if hit.size == 0:
        return noisy
    cdf = np.cumsum(model.q, axis=1)
    for i in range(cdf.shape[0]):  # guard float round-off: the last possible class closes the CDF
        cdf[i, np.flatnonzero(model.q[i] > 0)[-1] :] = 1.0
    noisy[hit] = (v[hit, None] >= cdf[clean[hit]]).sum(axis=1)
    return noisy


def _r(x: float) -> float:
    return round(float(x), 8)


def noise_stats(model: NoiseModel, clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Nominal and realised rates and matrices, for the manifest."""
    k = num_classes
    n = clean.size
    counts = np.bincount(clean, minlength=k)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (clean, noisy), 1)
    changed_per_class = counts - np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        realised = np.where(counts[:, None] > 0, confusion / np.maximum(counts[:, None], 1), 0.0)
    change_prob = model.rho * (1.0 - np.diag(model.q))
    return {
        "model": model.name,
        "matrix_convention": "T[true, noisy], rows sum to 1",
        "nominal_rate": _r(model.rate),
        "expected_rate": _r((counts * change_prob).sum() / n) if n else 0.0,
        "realised_rate": _r(changed_per_class.sum() / n) if n else 0.0,
        "per_class_realised": [_r(c / m) if m else 0.0 for c, m in zip(changed_per_class, counts)],
        "nominal_matrix": [[_r(x) for x in row] for row in model.matrix],
        "realised_matrix": [[_r(x) for x in row] for row in realised],
        "targets": model.targets,
    }
