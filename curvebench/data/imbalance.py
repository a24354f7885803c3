"""Per-class target counts of the long-tailed profiles (class 0 is the head).

``exp``: n_i = int(n_max * r**(i / (K - 1))) with r = 1 / IF, LDAM's float formula, which gives
the official integer counts (e.g. CIFAR-10, n_max 4900, IF 100: 4900, 2937, ..., 49; 12156 in
all). ``step``: the last ``round(K * step_tail_fraction)`` classes get int(n_max / IF), the
others n_max (HAR). ``none``: every class keeps n_max.
"""

from __future__ import annotations

from curvebench.data.types import IMBALANCE_PROFILES
from curvebench.errors import DataError


def class_counts(
    profile: str, n_max: int, num_classes: int, imbalance_factor: float, step_tail_fraction: float
) -> list[int]:
    """Target number of training images for each class 0..K-1."""
    if profile not in IMBALANCE_PROFILES:
        raise DataError(f"unknown imbalance_profile {profile!r}; choose one of {', '.join(IMBALANCE_PROFILES)}")
    k = num_classes
    if profile == "none" or k == 1:
        return [n_max] * k
    r = 1.0 / imbalance_factor
    if profile == "exp":
        return [int(n_max * r ** (i / (k - 1))) for i in range(k)]
    n_tail = int(round(k * step_tail_fraction))
    return [n_max] * (k - n_tail) + [int(n_max * r)] * n_tail
