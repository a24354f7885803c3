"""The dataset registry and ``load_dataset``.

A reader is ``loader(dataset_cfg: dict, data_root: Path) -> ImageArrays | ImageFiles``, registered
under the name that ``dataset.name`` selects; plugins register theirs with ``register_dataset`` from
a module named by a ``curvebench.datasets`` entry point (docs/ARCHITECTURE.md, Datasets).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

from curvebench.data.cfgutil import as_dict, require
from curvebench.data.cifar import CIFAR10, CIFAR100, load_cifar
from curvebench.data.digits import load_digits
from curvebench.data.idx import load_fmnist
from curvebench.data.imagefolders import load_animal10n, load_clothing1m, load_food101n
from curvebench.data.synthetic import load_synthetic
from curvebench.data.types import ImageArrays, ImageFiles
from curvebench.errors import DataError
from curvebench.registry import Registry, UnknownNameError

Loader = Callable[[dict[str, Any], Path], "ImageArrays | ImageFiles"]

DATASETS: Registry[Loader] = Registry("dataset")
DATASETS.register("cifar10")(partial(load_cifar, release=CIFAR10))
DATASETS.register("cifar100")(partial(load_cifar, release=CIFAR100))
DATASETS.register("synthetic")(load_synthetic)
DATASETS.register("digits")(load_digits)
DATASETS.register("fmnist")(load_fmnist)
DATASETS.register("clothing1m")(load_clothing1m)
DATASETS.register("food101n")(load_food101n)
DATASETS.register("animal10n")(load_animal10n)
register_dataset = DATASETS.register

_plugins_loaded = False


def load_dataset_plugins() -> None:
    """Register the readers of every ``curvebench.datasets`` entry point (once; loud on failure)."""
    global _plugins_loaded
    if not _plugins_loaded:
        from curvebench.plugins import DATASET_GROUP, load_registering

        load_registering(DATASET_GROUP, DATASETS)
        _plugins_loaded = True


def load_dataset(dataset_cfg: Any, data_root: Path) -> ImageArrays | ImageFiles:
    """Load the dataset a config node describes (its ``name`` picks the loader)."""
    cfg = as_dict(dataset_cfg)
    name = str(require(cfg, "name", "the dataset config"))
    load_dataset_plugins()
    try:
        loader = DATASETS.get(name)
    except UnknownNameError as e:
        raise DataError(str(e)) from None
    data = loader(cfg, Path(data_root))
    expected = cfg.get("num_classes")
    if expected is not None and int(expected) != data.num_classes:
        raise DataError(f"dataset {name!r}: the config says num_classes={expected}, the data has {data.num_classes}")
    return data
