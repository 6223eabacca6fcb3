"""Typed configuration helpers: strict `from_dict` (unknown keys are an error, nested dataclasses
rebuilt, lists → tuples) and JSON-ready `to_dict` for frozen config dataclasses."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from kdcore.errors import ConfigError

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """A dataclass (or nested structure) → plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _dataclass_in(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def from_dict(cls: type[T], d: dict | None, where: str = "") -> T:
    """Build config `cls` from a dict, recursively; unknown keys raise ConfigError."""
    if d is None:
        return cls()
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ConfigError(f"{where or cls.__name__} should be a mapping; got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in {where or cls.__name__}; allowed: {sorted(names)}")
    kwargs = {}
    for name, value in d.items():
        sub = _dataclass_in(hints.get(name))
        if value is None and _allows_none(hints.get(name)):
            pass
        elif sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where or cls.__name__}.{name}")
        elif sub is not None and not isinstance(value, sub):
            raise ConfigError(
                f"{where or cls.__name__}.{name} should be a mapping of {sub.__name__} settings; got {value!r}"
            )
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"Bad values for {where or cls.__name__}: {e}") from e
