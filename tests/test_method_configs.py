"""A method's hyper-parameters are a typed structured config (``Method.config_class``): the YAML
holds the values, the dataclass their types and value rules, checked when the config is composed."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from omegaconf import MISSING, OmegaConf

from curvebench.config import compose_config
from curvebench.engine.method import METHODS
from curvebench.engine.method_config import MethodConfig, method_config
from curvebench.errors import ConfigError
from curvebench.methods import load_all_methods
from tests.helpers import cli

load_all_methods()
ALL = METHODS.names()


def _keys(config_class: type) -> dict[str, object]:
    """The config class's fields, nested dataclasses as dicts of theirs."""
    hints = typing.get_type_hints(config_class)
    return {f.name: _keys(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else None
            for f in dataclasses.fields(config_class)}


def _yaml_keys(node: object) -> object:
    return {k: _yaml_keys(v) for k, v in node.items()} if isinstance(node, dict) else None


@pytest.mark.parametrize("method", ALL)
def test_every_method_has_a_config_class_with_exactly_its_yaml_keys(method):
    config_class = METHODS.get(method).config_class
    assert dataclasses.is_dataclass(config_class) and issubclass(config_class, MethodConfig)
    cfg = compose_config(["experiment=digits", f"method={method}"])
    node = OmegaConf.to_container(cfg.method, resolve=True)
    assert _keys(config_class) == _yaml_keys(node)
    params = method_config(config_class, cfg.method)
    assert isinstance(params, config_class) and params.name == method


@pytest.mark.parametrize("method", ALL)
def test_defaults_live_in_the_yaml_only(method):
    """One home for defaults (docs/ARCHITECTURE.md, Writing a method): no field of a config class
    has a default of its own, so the YAML and the dataclass cannot disagree."""
    pending = [METHODS.get(method).config_class]
    while pending:
        cls = pending.pop()
        for f in dataclasses.fields(cls):
            assert f.default is MISSING and f.default_factory is dataclasses.MISSING, f"{cls.__name__}.{f.name}"
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                pending.append(hint)


@pytest.mark.parametrize("overrides, message", [
    (["method=focal", "method.gamma=abc"], r"^method\.gamma must be a number, got 'abc'"),
    (["method=cb", "method.loss_type=5"], r"^method\.loss_type must be a string, got 5"),
    (["method=o2u", "method.cycle_length=2.5"], r"^method\.cycle_length must be an integer, got 2\.5"),
    (["method=o2u", "method.forget_rate=high"], r"^method\.forget_rate must be a number or null, got 'high'"),
    (["method=har", "method.drw=1"], r"^method\.drw must be true or false, got 1"),  # not coerced to true
    (["method=har", "method.drw=yes"], r"^method\.drw must be true or false, got 'yes'"),
    (["method=mwnet_noise", "method.hidden=2.0"], r"^method\.hidden must be an integer, got 2\.0"),
    (["method=curvenet", "method.probe.lr=fast"], r"^method\.probe\.lr must be a number, got 'fast'"),
    (["method=curvenet", "method.probe=5"], r"^method\.probe must be a mapping of epochs, lr, .*got 5"),
])
def test_a_wrong_type_fails_at_composition(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(["experiment=digits", *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["method=focal", "+method.gama=2"],
     r"unknown config key 'method\.gama': method 'focal' has no setting 'gama' \(its settings: name, gamma\)"),
    (["method=ce", "+method.gamma=2"], r"unknown config key 'method\.gamma': method 'ce' has no setting 'gamma'"),
    (["method=curvenet", "+method.probe.epoch=3"],
     r"unknown config key 'method\.probe\.epoch'.*settings under probe: epochs, lr,"),
])
def test_an_unknown_key_fails_at_composition(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(["experiment=digits", *overrides])


def test_a_missing_key_fails_at_composition():
    with pytest.raises(ConfigError, match=r"method\.gamma has no value: add `gamma: <value>` in "
                                          r"curvebench/conf/method/focal\.yaml"):
        compose_config(["experiment=digits", "method=focal", "~method.gamma"])
    with pytest.raises(ConfigError, match=r"method\.probe\.poll_s has no value: add `poll_s: <value>` under `probe:` in .*curvenet\.yaml"):
        compose_config(["experiment=digits", "method=curvenet", "~method.probe.poll_s"])


@pytest.mark.parametrize("overrides, message", [
    (["method=focal", "method.gamma=-0.5"], r"method\.gamma must be a number >= 0, got -0\.5"),
    (["method=ldam_drw", "method.s=0"], r"method\.s must be a number > 0, got 0"),
    (["method=coteaching", "method.num_gradual=0"], r"method\.num_gradual \(T_k, in epochs\) must be > 0"),
    (["method=mwnet_noise", "method.vnet_lr=0"], r"method\.vnet_lr must be positive"),
    (["method=curvenet", "method.probe.cyclic_half_period=0"],
     r"method\.probe\.cyclic_half_period must be an integer >= 1, got 0"),
    (["method=curvenet", "method.pseudo_meta_score=median"], r"method\.pseudo_meta_score must be 'mean' or 'last'"),
    (["method=curvenet_drw", "method.drw_beta=1"], r"method\.drw_beta must be a number in \[0, 1\)"),
])
def test_a_value_rule_fails_at_composition(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(["experiment=digits", *overrides])


def test_a_method_config_error_is_one_line_on_the_command_line(workdirs, capsys):
    assert cli("digits", "method=focal", "method.gamma=abc", "seed=1", "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "method.gamma must be a number, got 'abc'" in err and "Traceback" not in err
    assert not any(workdirs["results"].iterdir())


def test_values_are_kept_as_written_so_hashes_do_not_depend_on_the_types():
    """``Number`` keeps an int an int: ``s: 30`` and ``method.gamma=2`` are hashed as written."""
    ldam = compose_config(["experiment=digits", "method=ldam_drw"])
    assert type(ldam.method.s) is int and ldam.method.s == 30
    two = compose_config(["experiment=digits", "method=focal", "method.gamma=2"])
    assert type(two.method.gamma) is int
    assert type(compose_config(["experiment=digits", "method=focal", "method.gamma=2.0"]).method.gamma) is float
    assert compose_config(["experiment=digits", "method=ldam_drw", "method.s=30.5"]).method.s == 30.5
