"""Compose and validate run configs with Hydra (conf/ in this package)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from hydra import compose, version
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from curvebench.engine.method_config import method_config
from curvebench.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = ("dataset", "model", "method", "recipe", "experiment")


def conf_dirs(builtin_only: bool = False) -> list[Path]:
    """The config directories in Hydra's search order: curvebench/conf, then each plugin's."""
    from curvebench.plugins import plugin_conf_dirs

    return [CONF_DIR] + ([] if builtin_only else [d for _, d in plugin_conf_dirs()])


def config_search_path() -> ConfigSearchPath:
    """Hydra's search path for every compose and launch: curvebench/conf, then the plugins' directories."""
    from curvebench.plugins import plugin_conf_dirs

    search_path = create_config_search_path(f"file://{CONF_DIR}")
    after = SearchPathQuery(provider="main")  # Hydra requires its structured-config source to stay last
    for dist, conf in plugin_conf_dirs():
        search_path.append(f"curvebench-plugin:{dist}", f"file://{conf}", anchor=after)
        after = SearchPathQuery(path=f"file://{conf}")
    return search_path


def group_options(group: str, builtin_only: bool = False) -> list[str]:
    """The option names of a config group (e.g. ``method``), the plugins' included unless ``builtin_only``."""
    return sorted({p.stem for d in conf_dirs(builtin_only) for p in (d / group).glob("*.yaml")})


def config_file(group: str, name: str) -> str:
    """Where ``group=name`` is read from, for messages: curvebench/conf/..., a plugin's absolute path,
    or where to add it."""
    for d in conf_dirs():
        path = d / group / f"{name}.yaml"
        if path.is_file():
            return f"curvebench/conf/{group}/{name}.yaml" if d == CONF_DIR else str(path)
    return f"curvebench/conf/{group}/{name}.yaml"


def _friendly(err: Exception, overrides: Sequence[str]) -> ConfigError:
    text = str(err)
    m = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    if m:
        group, name = m.group(1).split("/")[-1], m.group(2)
        kind = "suite" if group == "experiment" else group
        if group == "method" and _registered_method(name):
            return ConfigError(f"method {name!r} is registered but has no config: add "
                               f"curvebench/conf/method/{name}.yaml, or for a plugin method method/{name}.yaml "
                               "in its curvebench.conf package (see README, Adding a method)")
        return ConfigError(f"unknown {kind} {name!r}; available: {', '.join(group_options(group))}")
    m = re.search(r"Key '([^']+)' is not in struct", text) or re.search(r"Could not override '([^']+)'", text)
    if m:  # name only the override that holds the key, and a command that prints every key
        key = m.group(1)
        given = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key]
        suite = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "SUITE")
        return ConfigError(f"unknown config key {key!r}" + (f" in {given[0]}" if given else "")
                           + f"; check the spelling (`curvebench {suite} --show-config` prints every key)")
    return ConfigError(f"invalid overrides {list(overrides)}: {text.splitlines()[0] if text else err!r}")


def _registered_method(name: str) -> bool:
    from curvebench.engine.method import METHODS
    from curvebench.methods import load_all_methods

    load_all_methods()
    return name in METHODS


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The run config for ``overrides`` (Hydra override syntax), validated."""
    search_path = config_search_path()
    GlobalHydra.instance().clear()
    try:  # what hydra.initialize_config_dir does, with the plugins' directories on the search path
        version.setbase("1.3")
        Hydra.create_main_hydra2(task_name="curvebench", config_search_path=search_path)
        cfg = compose("config", overrides=list(overrides))
    except (MissingConfigException, ConfigCompositionException, OverrideParseException, HydraException,
            OmegaConfBaseException) as err:
        raise _friendly(err, overrides) from None
    finally:
        GlobalHydra.instance().clear()
    validate_config(cfg)
    return cfg


OPTIMIZERS = ("sgd",)  # engine/context.py build_optimizer
SCHEDULES = ("multistep", "cosine", "constant")  # engine/schedules.py recipe_lr


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate_config(cfg: DictConfig) -> None:
    """Checks that Hydra cannot do for us; each message says what to change."""
    from curvebench.engine.method import METHODS
    from curvebench.methods import load_all_methods
    from curvebench.models import MODELS

    load_all_methods()
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"config cannot be resolved: {err}") from None
    r = cfg.recipe
    for key in ("epochs", "batch_size"):
        value = r[key]
        _require(_is_int(value) and value >= 1, f"recipe.{key} must be a positive integer, got {value!r}")
    _require(_is_number(r.lr) and float(r.lr) > 0, f"recipe.lr must be a positive number, got {r.lr!r}")
    for key in ("momentum", "weight_decay", "gamma"):
        if key in r:
            _require(_is_number(r[key]) and float(r[key]) >= 0, f"recipe.{key} must be a number >= 0, got {r[key]!r}")
    if "warmup_epochs" in r:
        _require(_is_int(r.warmup_epochs) and r.warmup_epochs >= 0,
                 f"recipe.warmup_epochs must be an integer >= 0, got {r.warmup_epochs!r}")
    _require(isinstance(r.milestones, Sequence) and not isinstance(r.milestones, str)
             and all(_is_int(m) and m >= 0 for m in r.milestones), "recipe.milestones must be a list of epochs >= 0")
    _require(r.get("optimizer") in OPTIMIZERS,
             f"recipe.optimizer must be one of {', '.join(OPTIMIZERS)}, got {r.get('optimizer')!r}")
    _require(r.get("schedule") in SCHEDULES,
             f"recipe.schedule must be one of {', '.join(SCHEDULES)}, got {r.get('schedule')!r}")
    t = cfg.train
    _require(t.num_threads is None or (_is_int(t.num_threads) and t.num_threads >= 1),
             f"train.num_threads must be null or a positive integer, got {t.num_threads!r}")
    _require(_is_int(t.eval_batch_size) and t.eval_batch_size >= 1,
             f"train.eval_batch_size must be a positive integer, got {t.eval_batch_size!r}")
    _require(cfg.method.name in METHODS or cfg.method.name not in group_options("method"),
             f"method {cfg.method.name!r} has {config_file('method', cfg.method.name)} but no registered class: "
             "add its module to METHOD_MODULES in curvebench/methods.py (a plugin: a curvebench.methods entry point)")
    _require(cfg.method.name in METHODS, f"unknown method {cfg.method.name!r}; available: {', '.join(METHODS.names())}")
    _require(cfg.model.name in MODELS, f"unknown model {cfg.model.name!r}; available: {', '.join(MODELS.names())}")
    _require(isinstance(cfg.seed, int), f"seed must be an integer, got {cfg.seed!r}")
    _require(isinstance(t.get("compile_meta", False), bool),
             f"train.compile_meta must be true or false, got {t.get('compile_meta')!r}")
    lb = cfg.train.limit_batches
    _require(lb is None or (isinstance(lb, int) and lb >= 1), f"train.limit_batches must be null or >= 1, got {lb!r}")
    dev = str(cfg.train.device)
    _require(dev in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", dev) is not None,
             f"train.device must be auto, cpu, cuda or cuda:N, got {dev!r}")
    method_cls = METHODS.get(cfg.method.name)
    method_config(method_cls.config_class, cfg.method)  # the method's node: types, keys, value rules
    _require(not method_cls.needs_meta or int(cfg.split.meta_per_class) != 0,  # -1: a declared clean set
             f"method {cfg.method.name!r} needs a clean meta set, but split.meta_per_class is 0; "
             "set split.meta_per_class to k > 0")
    method_cls.check_config(cfg)  # the method's rules across config nodes


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
