"""Checks of model configurations: every value is checked where it enters, by name.

Each model's configuration is one dataclass. Its ``__post_init__`` calls
:func:`check_types` (every field against its annotation: ``int``, ``float``, ``bool``,
``str``, ``tuple[int, ...]``, ``X | None``; lists become tuples, numpy numbers Python
ones; an integer is a number, a boolean is not) and then range checks built from the
helpers below. A bad value raises :class:`ConfigError`, a ``ValueError`` that names the
key and the value::

    fusion_tokens must be a positive integer, got 0
    channels must be a list of integers, got 'abc'

:func:`check_keys` names the known keys when a key is unknown; the registry runs it
before building a model (``create_model``, ``check_model_config``).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


class ConfigError(ValueError):
    """A configuration value (or key) that the model cannot take: names both."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


def fail(key: str, expected: str, value: Any) -> ConfigError:
    """``ConfigError("KEY must be EXPECTED, got VALUE")``."""
    return ConfigError(key, f"{key} must be {expected}, got {_show(value)}")


# ---------------------------------------------------------------------------- keys, types


def check_keys(
    cls: type, config: Mapping[str, Any], fixed: Iterable[str] = ("num_classes",)
) -> None:
    """Every key of ``config`` is a field of the dataclass ``cls`` that a user may set
    (``fixed`` ones are set by the caller: ``num_classes`` from the dataset's classes)."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    fixed = set(fixed)
    for key in config:
        if key in fixed:
            raise ConfigError(key, f"{key} cannot be set: it follows from the data")
        if key not in names:
            known = ", ".join(n for n in names if n not in fixed)
            raise ConfigError(key, f"unknown key {key!r}; known keys: {known}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_types(config: Any) -> None:
    """Check every field of the dataclass instance ``config`` against its annotation and
    store the normalised value (tuples for lists, Python numbers for numpy ones)."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        if f.name in hints:
            value = getattr(config, f.name)
            setattr(config, f.name, _checked(f.name, value, hints[f.name]))


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_ITEMS = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _checked(key: str, value: Any, annotation: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and others[0] in _EXPECTED:
            try:
                return _checked(key, value, others[0])
            except ConfigError:
                raise fail(key, f"{_EXPECTED[others[0]]} or null", value) from None
        return value
    if annotation in _EXPECTED:
        scalar = _scalar(value, annotation)
        if scalar is None:
            raise fail(key, _EXPECTED[annotation], value)
        return scalar
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _ITEMS:
        expected = f"a list of {_ITEMS[args[0]]}"
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise fail(key, expected, value)
        items = [_scalar(v, args[0]) for v in value]
        if any(v is None for v in items):
            raise fail(key, expected, value)
        return tuple(items)
    return value  # an annotation this checker does not know: left to the model


def _scalar(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (int, float, bool or str), or None when it is not one."""
    if kind is bool:
        return bool(value) if _is_bool(value) else None
    if kind is str:
        return value if isinstance(value, str) else None
    if _is_bool(value):
        return None
    if kind is int:
        return int(value) if isinstance(value, numbers.Integral) else None
    if isinstance(value, numbers.Real):
        return value if type(value) in (int, float) else float(value)  # numpy -> float
    return None


# ---------------------------------------------------------------------------- ranges


def positive(config: Any, *names: str) -> None:
    """Each named field (an int or a float; None allowed and skipped) is above 0."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not value > 0:
            kind = "integer" if isinstance(value, int) else "number"
            raise fail(name, f"a positive {kind}", value)


def non_negative(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not value >= 0:
            raise fail(name, "0 or more", value)


def fraction(config: Any, *names: str, closed: bool = False) -> None:
    """Each named field is in [0, 1) (``closed``: (0, 1], a share that cannot be 0)."""
    for name in names:
        value = getattr(config, name)
        inside = 0.0 < value <= 1.0 if closed else 0.0 <= value < 1.0
        if not inside:
            raise fail(name, "in (0, 1]" if closed else "in [0, 1)", value)


def positive_items(config: Any, *names: str) -> None:
    """Each named field is a non-empty list of positive integers."""
    for name in names:
        value = getattr(config, name)
        if not value or any(v <= 0 for v in value):
            raise fail(name, "a non-empty list of positive integers", value)


def one_of(config: Any, name: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    value = getattr(config, name)
    if value not in choices:
        raise fail(name, f"one of {', '.join(choices)}", value)
