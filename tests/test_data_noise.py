"""Noise models: realised rates within binomial tolerance, structure of each model, common random numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curvebench.data import SplitSpec, make_split
from curvebench.data.noise import CIFAR10_ASYM, build_noise_model, draw_noisy_labels
from curvebench.errors import DataError
from tests.datahelpers import fake_cifar

C10 = fake_cifar(10)
P = 0.4


def _split(model: str, rate: float = P, imbalance_factor: float = 1, **kw):
    return make_split(C10, SplitSpec("cifar10", meta_per_class=100, imbalance_factor=imbalance_factor,
                                     noise_model=model, noise_rate=rate, **kw))  # fmt: skip


def _within_binomial(realised: float, expected: float, n: int, sigmas: float = 4.5) -> bool:
    return abs(realised - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n) + 1e-12


# Expected changed fraction on the balanced CIFAR-10 pool (K = 10).
EXPECTED = {
    "unif_prior": P * 0.9,  # the prior is uniform when IF = 1
    "unif": P * 0.9,
    "sym": P,
    "flip": P,
    "flip2": P,
    "pairflip": P,
    "asym": P * 0.5,  # 5 of 10 classes are mapped
    "none": 0.0,
}


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_realised_rate_within_binomial_tolerance(model: str) -> None:
    split = _split(model, rate=0.0 if model == "none" else P)
    noise = split.manifest["noise"]
    changed = float(np.mean(split.noisy_labels != split.clean_labels))
    assert noise["realised_rate"] == pytest.approx(changed, abs=1e-8)
    assert noise["expected_rate"] == pytest.approx(EXPECTED[model], abs=1e-8)
    assert _within_binomial(changed, EXPECTED[model], split.num_train)
    matrix = np.array(noise["nominal_matrix"])
    assert np.allclose(matrix.sum(axis=1), 1.0) and (matrix >= 0).all()
    realised = np.array(noise["realised_matrix"])
    assert np.allclose(realised.sum(axis=1), 1.0)
    assert len(noise["per_class_realised"]) == 10


def test_imbalanced_realised_rate_matches_expectation() -> None:
    for model in ("unif_prior", "unif", "flip2"):
        split = _split(model, imbalance_factor=100)
        noise = split.manifest["noise"]
        assert _within_binomial(noise["realised_rate"], noise["expected_rate"], split.num_train)
    # unif_prior keeps the head's label more often: its expected rate is below 0.9 p.
    assert _split("unif_prior", imbalance_factor=100).manifest["noise"]["expected_rate"] < 0.9 * P


def test_flip2_uses_exactly_two_fixed_targets_per_class() -> None:
    split = _split("flip2")
    targets = split.manifest["noise"]["targets"]
    for c in range(10):
        wrong = set(split.noisy_labels[(split.clean_labels == c) & (split.noisy_labels != c)].tolist())
        assert wrong == set(targets[c]) and len(wrong) == 2 and c not in wrong
    flip = _split("flip")
    for c in range(10):
        wrong = set(flip.noisy_labels[(flip.clean_labels == c) & (flip.noisy_labels != c)].tolist())
        assert wrong == {flip.manifest["noise"]["targets"][c]}


def test_pairflip_and_asym_maps() -> None:
    split = _split("pairflip")
    moved = split.noisy_labels != split.clean_labels
    assert np.array_equal(split.noisy_labels[moved], (split.clean_labels[moved] + 1) % 10)
    split = _split("asym")
    moved = split.noisy_labels != split.clean_labels
    for src, dst in CIFAR10_ASYM.items():
        assert set(split.noisy_labels[moved & (split.clean_labels == src)].tolist()) == {dst}
    assert not moved[np.isin(split.clean_labels, [0, 1, 6, 7, 8])].any()


def test_sym_never_keeps_the_true_label() -> None:
    rng = np.random.default_rng(0)
    clean = np.repeat(np.arange(10), 1000)
    model = build_noise_model("sym", 0.5, 10, np.full(10, 0.1), rng, (), "x")
    assert np.allclose(np.diag(model.q), 0.0)
    forced = draw_noisy_labels(model, clean, np.zeros(clean.size), rng.random(clean.size))  # u = 0: all corrupted
    assert (forced != clean).all()
    assert set(np.unique(forced[clean == 3])) == set(range(10)) - {3}
    # The inclusive variant (unif) keeps about 1/K of the corrupted labels.
    unif = build_noise_model("unif", 0.5, 10, np.full(10, 0.1), rng, (), "x")
    kept = (draw_noisy_labels(unif, clean, np.zeros(clean.size), rng.random(clean.size)) == clean).mean()
    assert _within_binomial(kept, 0.1, clean.size)


def test_unif_prior_keeps_class_distribution_in_expectation() -> None:
    split = _split("unif_prior", imbalance_factor=100)
    n = split.num_train
    clean = np.bincount(split.clean_labels, minlength=10)
    observed = np.bincount(split.noisy_labels, minlength=10)
    prior = clean / n
    for c in range(10):
        stay = 1 - P + P * prior[c]
        var = clean[c] * stay * (1 - stay) + (n - clean[c]) * P * prior[c] * (1 - P * prior[c])
        assert abs(observed[c] - clean[c]) <= 4.5 * math.sqrt(var)
    # MW-Net's unif flattens it instead (the head keeps about 1 - p + p/K, plus a small inflow).
    unif = _split("unif", imbalance_factor=100)
    assert np.bincount(unif.noisy_labels, minlength=10)[0] < 0.75 * np.bincount(unif.clean_labels)[0]  # E: 0.70


def test_common_random_numbers_across_cells() -> None:
    base = _split("unif_prior", rate=0.0, imbalance_factor=10)
    p2, p4 = _split("unif_prior", rate=0.2, imbalance_factor=10), _split("unif_prior", rate=0.4, imbalance_factor=10)
    # The noise rate does not move the imbalance subset or the meta set ...
    assert np.array_equal(base.train_indices, p4.train_indices) and np.array_equal(base.meta_indices, p4.meta_indices)
    # ... and a higher rate corrupts a superset of the samples.
    draw2, draw4 = p2.noisy_labels != p2.clean_labels, p4.noisy_labels != p4.clean_labels
    assert not (draw2 & ~draw4).any()
    # Nested imbalance subsets, same meta set, for one data_seed.
    if100 = _split("none", rate=0.0, imbalance_factor=100)
    assert np.isin(if100.train_indices, base.train_indices).all()
    assert np.array_equal(if100.meta_indices, base.meta_indices)
    # A different data_seed gives a different split.
    other = _split("unif_prior", rate=0.4, imbalance_factor=10, data_seed=1)
    assert not np.array_equal(other.meta_indices, p4.meta_indices)


def test_noise_then_imbalance_subsamples_by_noisy_label() -> None:
    split = _split("unif", imbalance_factor=10, order="noise_imbalance")
    observed = np.bincount(split.noisy_labels, minlength=10)
    targets = split.manifest["counts"]["target"]
    assert (observed <= np.array(targets)).all()
    assert observed[1:].tolist() == targets[1:]  # the tail classes are filled exactly
    assert split.num_train <= 20021


def test_asym_needs_cifar10_classes() -> None:
    c100 = fake_cifar(100)
    with pytest.raises(DataError, match="CIFAR-10"):
        make_split(c100, SplitSpec("cifar100", meta_per_class=10, noise_model="asym", noise_rate=0.4))
