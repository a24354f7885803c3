"""Class-balanced (effective-number) class weights for CurveNet's DRW option (methods.md §2.7, §5).

TODO(merge): private copy until ``baselines/common.py: class_balanced_weights`` lands on main;
then import that one and delete this function.
"""

from __future__ import annotations

import numpy as np


def class_balanced_weights(counts, beta: float) -> np.ndarray:
    """w_c = (1 - beta) / (1 - beta^{n_c}), normalised to sum to K (Cui et al. 2019).

    ``beta = 0`` gives all ones. A class with no observed sample gets weight 0 (it never occurs as a
    label, so the weight is never used) and the others are normalised so that the K weights sum to K.
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or (n < 0).any() or not (n > 0).any():
        raise ValueError(f"counts must be a 1-D array of class counts >= 0 with some > 0, got {n.tolist()}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    w = np.zeros_like(n)
    present = n > 0
    w[present] = (1.0 - beta) / (1.0 - np.power(beta, n[present]))
    return w * (n.size / w.sum())
