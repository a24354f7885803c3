"""scikit-learn's 8x8 digits (bundled with scikit-learn, works offline).

Images are scaled from 0..16 to uint8 0..255 as [N, 8, 8, 1]. A fixed, balanced test set of
``test_per_class`` images per class (default 50) is drawn with a constant seed
(``DIGITS_TEST_SEED``, never the split's data_seed); the remaining images form the training set
in their original order. Class sizes differ slightly (174..183 per class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curvebench.data.hashing import arrays_sha256
from curvebench.data.types import ImageArrays
from curvebench.errors import DataError

DIGITS_TEST_SEED = 20_220_228  # fixed: the test set never depends on data_seed


def load_digits(cfg: dict[str, Any], data_root: Path) -> ImageArrays:
    """Dataset loader for the ``digits`` config (``data_root`` is unused)."""
    import sklearn
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    images = np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = raw.target.astype(np.int64)
    per_class = int(cfg.get("test_per_class", 50))
    counts = np.bincount(labels, minlength=10)
    if not 0 < per_class < counts.min():
        raise DataError(f"digits: test_per_class must lie in 1..{counts.min() - 1}, got {per_class}")
    rng = np.random.default_rng(np.random.SeedSequence(DIGITS_TEST_SEED))
    test_idx = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
    )
    is_test = np.zeros(labels.size, dtype=bool)
    is_test[test_idx] = True
    train_x, train_y = images[~is_test], labels[~is_test]
    test_x, test_y = images[is_test], labels[is_test]
    return ImageArrays(
        name=str(cfg.get("name", "digits")),
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        fingerprint=arrays_sha256(train_x, train_y, test_x, test_y),
        official=True,
        source={
            "format": "sklearn.datasets.load_digits",
            "scikit_learn": sklearn.__version__,
            "test_per_class": per_class,
            "test_seed": DIGITS_TEST_SEED,
        },
    )
