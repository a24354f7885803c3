"""A method's hyper-parameters as a typed structured config (OmegaConf structured configs).

Each method declares a dataclass, ``Method.config_class``, with one field per key of its YAML
(``curvebench/conf/method/<name>.yaml``). The two have one job each:

- the YAML holds the values: the defaults, with their sources, that suites and the command line
  override. The dataclass has no defaults (every field is ``MISSING``), so there is one home for them;
- the dataclass holds the types and the value rules. ``compose_config`` (through ``validate_config``)
  merges the composed ``method`` node into it: a wrong type, an unknown key or a missing key fails
  there with a one-line ``ConfigError`` naming the key. Rules a type cannot express (beta in [0, 1),
  lr > 0) live in the dataclass's ``__post_init__``, written with ``require`` and the helpers below.

Nothing is converted: a value passes only as it was written (``"yes"`` or ``1`` for a bool, ``"3"``
for an integer are refused, not coerced), so the composed config, and hence every config hash, holds
exactly what was written. Reals are typed ``Number`` (int or float), which keeps ``30`` as 30 and
``0.5`` as 0.5 (a ``float`` field would turn ``30`` into 30.0 and change the hash).

Rules that span config nodes (``meta_per_class`` against the split, the DRW epoch against the
recipe's milestones, ``slmo`` against the model) stay in ``Method.check_config``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Union

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from curvebench.errors import ConfigError

Number = Union[int, float]  # a real hyper-parameter, kept as written (int or float)


@dataclass
class MethodConfig:
    """The keys every method has; a method's config class extends it (``ce`` has no others)."""

    name: str = MISSING


# -- value rules (for __post_init__) -------------------------------------------------------------
def require(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``; the message names the key and what to write."""
    if not ok:
        raise ConfigError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_nonneg(value: Any, key: str) -> None:
    require(_is_number(value) and value >= 0, f"{key} must be a number >= 0, got {value!r}")


def check_positive(value: Any, key: str) -> None:
    require(_is_number(value) and value > 0, f"{key} must be a number > 0, got {value!r}")


def check_beta(value: Any, key: str) -> None:
    """An effective-number beta (class-balanced weights) or another fraction in [0, 1)."""
    require(_is_number(value) and 0.0 <= value < 1.0, f"{key} must be a number in [0, 1) (e.g. 0.9999), got {value!r}")


def check_int_at_least(value: Any, key: str, low: int, null: str | None = None) -> None:
    """An integer >= ``low``; with ``null`` (what null means), None is allowed too."""
    if value is None and null is not None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    require(ok, f"{key} must be " + (f"null ({null}) or " if null else "") + f"an integer >= {low}, got {value!r}")


# -- validation ----------------------------------------------------------------------------------
def method_config(config_class: type[MethodConfig], node: Mapping[str, Any]) -> MethodConfig:
    """The ``method`` node (resolved values) as an instance of ``config_class``: types checked with
    no conversion, unknown and missing keys refused, then its ``__post_init__`` rules."""
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    name = raw.get("name")
    schema = OmegaConf.structured(config_class)
    try:
        typed = OmegaConf.merge(schema, raw)
    except ConfigKeyError as err:
        raise _unknown_key(config_class, str(err.full_key), name) from None
    except ValidationError as err:
        key = str(err.full_key).split("[")[0]  # a list's key, not its item's
        raise _wrong_type(config_class, key, _lookup(raw, key)) from None
    missing = sorted(OmegaConf.missing_keys(typed))
    if missing:
        key = missing[0]
        parent, _, leaf = key.rpartition(".")
        where = (f"under `{parent}:` " if parent else "") + (f"in curvebench/conf/method/{name}.yaml" if name
                                                             else "in the method's YAML")
        raise ConfigError(f"method.{key} has no value: add `{leaf}: <value>` {where} (or pass method.{key}=<value>)")
    converted = _first_converted(raw, OmegaConf.to_container(typed), "")
    if converted is not None:
        raise _wrong_type(config_class, converted, _lookup(raw, converted))
    try:
        return OmegaConf.to_object(typed)  # type: ignore[return-value]  # runs every __post_init__
    except (ValidationError, MissingMandatoryValue) as err:  # defensive: the checks above come first
        raise ConfigError(f"method.{err.full_key}: {str(err).splitlines()[0]}") from None


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    out: Any = values
    for part in dotted.split("."):
        out = out.get(part) if isinstance(out, Mapping) else None
    return out


def _first_converted(raw: Any, typed: Any, prefix: str) -> str | None:
    """The first key whose typed value differs from the value written (OmegaConf coerced it)."""
    if isinstance(raw, Mapping) and isinstance(typed, Mapping):
        for key, value in raw.items():
            found = _first_converted(value, typed.get(key), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    if isinstance(raw, list) and isinstance(typed, list) and len(raw) == len(typed):
        converted = any(_first_converted(r, t, "") is not None for r, t in zip(raw, typed))
        return prefix.rstrip(".") if converted else None
    if type(raw) is not type(typed) or raw != typed:
        return prefix.rstrip(".")
    return None


def _field_type(config_class: type, dotted: str) -> Any:
    """The annotation of a (nested) field, e.g. ``probe.lr``; None when there is no such field."""
    hint: Any = config_class
    for part in dotted.split("."):
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return None
        hint = typing.get_type_hints(hint).get(part)
    return hint


def _describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like, in the words of the error messages."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        inner = Union[rest] if len(rest) > 1 else rest[0]  # type: ignore[valid-type]
        return f"{_describe(inner)} or null"
    if hint is Number or (typing.get_origin(hint) is Union and set(args) == {int, float}):
        return "a number"
    if typing.get_origin(hint) is list:
        return f"a list ({_describe(args[0])} each)" if args else "a list"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}"
    return {bool: "true or false", int: "an integer", str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _wrong_type(config_class: type, key: str, value: Any) -> ConfigError:
    hint = _field_type(config_class, key)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return ConfigError(f"method.{key} must be {_describe(hint)}, got {value!r}; set its keys one by one "
                           f"(method.{key}.<key>=<value>)")
    return ConfigError(f"method.{key} must be {_describe(hint)}, got {value!r}; write method.{key}=<{_describe(hint)}>")


def _unknown_key(config_class: type, key: str, name: Any) -> ConfigError:
    parent, _, leaf = key.rpartition(".")
    owner = _field_type(config_class, parent) if parent else config_class
    known = ", ".join(f.name for f in dataclasses.fields(owner)) if dataclasses.is_dataclass(owner) else ""
    remedy = (f"or declare it in {config_class.__name__}" if config_class is not MethodConfig else
              "or give the method a config_class (docs/ARCHITECTURE.md, Writing a method)")
    return ConfigError(f"unknown config key 'method.{key}': method {name!r} has no setting {leaf!r} "
                       f"(its settings{' under ' + parent if parent else ''}: {known}); check the spelling, {remedy}")
