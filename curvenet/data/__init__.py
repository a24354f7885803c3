"""Data layer: dataset readers and the corruption protocol (meta set -> imbalance -> noise).

Public API:

- ``load_dataset(dataset_cfg, data_root) -> ImageArrays | ImageFiles``
- ``write_synthetic_cifar(root, num_classes, train_per_class, test_per_class, image_size, seed)``
"""

from curvenet.data.datasets import DATASETS, load_dataset
from curvenet.data.synthetic import write_synthetic_cifar
from curvenet.data.types import (
    IMBALANCE_PROFILES,
    NOISE_MODELS,
    ORDERS,
    DataError,
    ImageArrays,
    ImageFiles,
    Split,
    SplitSpec,
)

__all__ = [
    "DATASETS",
    "IMBALANCE_PROFILES",
    "NOISE_MODELS",
    "ORDERS",
    "DataError",
    "ImageArrays",
    "ImageFiles",
    "Split",
    "SplitSpec",
    "load_dataset",
    "write_synthetic_cifar",
]
