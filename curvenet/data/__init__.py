"""Data layer: dataset readers and the corruption protocol (meta set -> imbalance -> noise).

Public API (implemented in the modules of this package):

- ``load_dataset(dataset_cfg, data_root) -> ImageArrays``
- ``spec_from_config(cfg) -> SplitSpec``
- ``get_split(data, spec, splits_dir) -> Split``: load the stored split (verifying its sha256)
  or create and store it.
"""

from curvenet.data.types import (
    IMBALANCE_PROFILES,
    NOISE_MODELS,
    ORDERS,
    DataError,
    ImageArrays,
    Split,
    SplitSpec,
)

__all__ = [
    "IMBALANCE_PROFILES",
    "NOISE_MODELS",
    "ORDERS",
    "DataError",
    "ImageArrays",
    "Split",
    "SplitSpec",
]
