"""Checks a suite passes before any run trains: paths, data, splits, devices and fast-path flags.

Everything that depends on the config, the data, the split or the paths, and not on training, is
checked here once per suite, so a cause the user can fix stops the suite with one error (exit 2)
and leaves no run record. ``failed.json`` is reserved for failures of training itself.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from curvebench.errors import ConfigError

_PATH_VARS = {"results": "CURVEBENCH_RESULTS", "splits": "CURVEBENCH_SPLITS"}


def check_writable_dir(path: Path, what: str) -> None:
    """``path`` is (or can be made) a directory this process can write into; ConfigError otherwise."""
    var = _PATH_VARS.get(what, "")
    where = f"{path} ({var} or paths.{what})" if var else str(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{what} directory {where}: {parent} is a file, not a directory; "
                              "point it at a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{what} directory {where} is not writable ({err.strerror or err}); "
                          "fix its permissions or choose another directory") from None


def _key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def preflight(runs: Sequence[Any]) -> None:
    """Check every planned run's paths, device, flags, dataset and split; raise on the first problem.

    Datasets are loaded (and verified) once per distinct dataset config; each distinct split is
    created or verified once (a stored split that is damaged raises DataError naming its files).
    """
    from curvebench.data import get_split, load_dataset, spec_from_config
    from curvebench.engine.fastpath import check_flags
    from curvebench.run import select_device

    checked_dirs: set[tuple[str, str]] = set()
    checked_train: set[str] = set()
    datasets: dict[str, Any] = {}
    splits: set[tuple[str, str]] = set()
    for plan in runs:
        cfg = plan.cfg
        for what in ("results", "splits"):
            path = str(cfg.paths[what])
            if (what, path) not in checked_dirs:
                checked_dirs.add((what, path))
                check_writable_dir(Path(path).absolute(), what)
        train_key = _key(plan.config["train"])
        if train_key not in checked_train:
            checked_train.add(train_key)
            check_flags(cfg.train, select_device(str(cfg.train.device)))
        data_key = _key([plan.config["dataset"], plan.config["paths"]["data"]])
        if data_key not in datasets:
            datasets[data_key] = load_dataset(cfg.dataset, Path(cfg.paths.data))
        data = datasets[data_key]
        spec = spec_from_config(cfg)
        if (data_key, spec.spec_hash()) not in splits:
            splits.add((data_key, spec.spec_hash()))
            get_split(data, spec, Path(cfg.paths.splits))
