"""Per-class counts of the CurveNet protocol (meta set, then imbalance) against the official goldens."""

from __future__ import annotations

import numpy as np
import pytest

from curvebench.data import SplitSpec, make_split
from curvebench.data.imbalance import class_counts
from tests.datahelpers import fake_cifar

C10 = fake_cifar(10)
C100 = fake_cifar(100)

# docs/methods.md §1.3: CIFAR-10 with 100 meta images per class removed (n_max 4900).
C10_GOLDEN = {
    1: [4900] * 10,
    10: [4900, 3793, 2937, 2274, 1760, 1363, 1055, 817, 632, 490],
    20: [4900, 3512, 2518, 1805, 1294, 927, 665, 476, 341, 245],
    50: [4900, 3172, 2054, 1330, 861, 557, 361, 233, 151, 98],
    100: [4900, 2937, 1760, 1055, 632, 379, 227, 136, 81, 49],
    200: [4900, 2719, 1509, 837, 465, 258, 143, 79, 44, 24],
}
C10_TOTALS = {1: 49000, 10: 20021, 20: 16683, 50: 13717, 100: 12156, 200: 10978}


@pytest.mark.parametrize("imbalance_factor", sorted(C10_GOLDEN))
def test_cifar10_counts_with_meta(imbalance_factor: int) -> None:
    spec = SplitSpec("cifar10", meta_per_class=100, imbalance_factor=imbalance_factor)
    split = make_split(C10, spec)
    counts = np.bincount(split.clean_labels, minlength=10).tolist()
    assert counts == C10_GOLDEN[imbalance_factor]
    assert split.num_train == C10_TOTALS[imbalance_factor]
    assert split.manifest["counts"]["train_clean"] == counts
    assert split.manifest["counts"]["pool"] == [4900] * 10


@pytest.mark.parametrize(("imbalance_factor", "total", "head", "tail"), [
    (1, 49000, [490, 490, 490], [490, 490, 490]),
    (10, 19183, [490, 478, 467], [51, 50, 49]),
    (20, 15594, [490, 475, 461], [26, 25, 24]),
])  # fmt: skip
def test_cifar100_counts_with_meta(imbalance_factor: int, total: int, head: list[int], tail: list[int]) -> None:
    split = make_split(C100, SplitSpec("cifar100", meta_per_class=10, imbalance_factor=imbalance_factor))
    counts = np.bincount(split.clean_labels, minlength=100).tolist()
    assert split.num_train == total
    assert counts[:3] == head and counts[-3:] == tail
    assert counts == sorted(counts, reverse=True)


def test_counts_without_meta_set_as_ldam() -> None:
    c10 = make_split(C10, SplitSpec("cifar10", meta_per_class=0, imbalance_factor=100))
    c100 = make_split(C100, SplitSpec("cifar100", meta_per_class=0, imbalance_factor=100))
    assert c10.num_train == 12406 and c10.num_meta == 0
    assert np.bincount(c10.clean_labels).tolist()[-1] == 50
    assert c100.num_train == 10847 and np.bincount(c100.clean_labels).min() == 5
    assert sum(class_counts("exp", 5000, 10, 50, 0.5)) == 13996
    assert sum(class_counts("exp", 500, 100, 50, 0.5)) == 12608


def test_step_and_none_profiles() -> None:
    assert class_counts("step", 4900, 10, 10, 0.5) == [4900] * 5 + [490] * 5
    assert class_counts("step", 4900, 10, 100, 0.3) == [4900] * 7 + [49] * 3
    split = make_split(C10, SplitSpec("cifar10", meta_per_class=100, imbalance_profile="none"))
    assert split.num_train == 49000


def test_meta_set_balanced_disjoint_and_clean() -> None:
    split = make_split(C10, SplitSpec("cifar10", meta_per_class=100, imbalance_factor=10, noise_model="unif", noise_rate=0.4))
    assert np.bincount(split.meta_labels, minlength=10).tolist() == [100] * 10
    assert np.array_equal(split.meta_labels, C10.train_labels[split.meta_indices])  # never corrupted
    assert np.intersect1d(split.meta_indices, split.train_indices).size == 0
    assert np.unique(split.train_indices).size == split.num_train
    assert np.array_equal(split.clean_labels, C10.train_labels[split.train_indices])


def test_uneven_classes_use_smallest_pool() -> None:
    labels = np.repeat(np.arange(3), [12, 20, 15])
    data = fake_cifar(10, per_class=1)
    data = type(data)(**{**data.__dict__, "train_labels": labels, "train_images": np.zeros((47, 1, 1, 3), np.uint8),
                         "num_classes": 3, "class_names": ("a", "b", "c"), "name": "tiny"})  # fmt: skip
    split = make_split(data, SplitSpec("tiny", meta_per_class=2, imbalance_factor=1))
    assert np.bincount(split.clean_labels).tolist() == [10, 10, 10]  # n_max = min pool (12 - 2)
