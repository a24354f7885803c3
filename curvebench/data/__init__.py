"""Data layer: dataset readers and the corruption protocol (meta set -> imbalance -> noise).

Public API:

- ``load_dataset(dataset_cfg, data_root) -> ImageArrays | ImageFiles``; ``register_dataset(name)``
  (a decorator) adds a reader
- ``spec_from_config(cfg) -> SplitSpec``
- ``make_split(data, spec) -> Split``: pure, writes nothing.
- ``get_split(data, spec, splits_dir) -> Split``: load the stored split (verifying its sha256)
  or create and store it.
- ``build_splits(items, data_root, splits_dir, lock_path, check, update_lock) -> (table, ok)``
- ``write_synthetic_cifar(root, num_classes, train_per_class, test_per_class, image_size, seed)``

See ``split`` (protocol and seeding), ``store`` (file layout), ``noise`` (noise models) and
``lock`` (lock file).
"""

from curvebench.data.datasets import DATASETS, load_dataset, load_dataset_plugins, register_dataset
from curvebench.data.lock import LOCK_PATH, build_splits
from curvebench.data.specs import spec_from_config
from curvebench.data.split import make_split, validate_spec
from curvebench.data.store import get_split, load_split
from curvebench.data.synthetic import write_synthetic_cifar
from curvebench.data.types import IMBALANCE_PROFILES, NOISE_MODELS, ORDERS, ImageArrays, ImageFiles, Split, SplitSpec
from curvebench.errors import DataError

__all__ = [
    "DATASETS",
    "IMBALANCE_PROFILES",
    "LOCK_PATH",
    "NOISE_MODELS",
    "ORDERS",
    "DataError",
    "ImageArrays",
    "ImageFiles",
    "Split",
    "SplitSpec",
    "build_splits",
    "get_split",
    "load_dataset",
    "load_dataset_plugins",
    "load_split",
    "make_split",
    "register_dataset",
    "spec_from_config",
    "validate_spec",
    "write_synthetic_cifar",
]
