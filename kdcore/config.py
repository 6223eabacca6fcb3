"""Typed configuration: each setting's default, choices, bounds and help live once, on its field.

field:      `temperature: float = setting(20.0, "KD temperature T (paper: 20)", min=...)`
choices:    a `typing.Literal[...]` hint, checked by `from_dict` (ConfigError lists the allowed values)
from_dict:  strict (unknown keys are an error) and merging: a nested mapping updates the *default
            instance* of its field, so `{"finetune": {"epochs": 3}}` keeps every other setting of
            `KDConfig().finetune` (whose factory differs from `TrainConfig()`)
settings:   the flat list of a config's settings (`kd.distill.epochs`, ...), from which the CLI
            flags (`kdcore.cli.flags`) and the dashboard forms (`app.config_form`) are generated
to_dict:    JSON-ready dict, the config.json written next to every run's outputs
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from kdcore.errors import ConfigError

T = TypeVar("T")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, **constraints: Any) -> Any:
    """A dataclass field carrying its help text (units, the paper's value) and optional `min`/`max`
    (inclusive bounds, checked by `from_dict` and used by the forms). Give `factory` for mutable defaults."""
    metadata = {"help": help, **constraints}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


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


def choices_of(tp: Any) -> tuple:
    """The values a `Literal[...]` (or `Literal[...] | None`) hint allows; () for any other hint."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((choices_of(a) for a in typing.get_args(tp) if typing.get_origin(a) is typing.Literal), ())
    return ()


def declared_default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory called), or None when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _check(f: dataclasses.Field, hint: Any, value: Any, where: str) -> None:
    allowed = choices_of(hint)
    if allowed and value not in allowed and not (value is None and _allows_none(hint)):
        raise ConfigError(f"{where}.{f.name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"≥ {lo}" if hi is None else (f"≤ {hi}" if lo is None else f"in [{lo}, {hi}]")
            raise ConfigError(f"{where}.{f.name} must be {bounds}; got {value!r}")


def from_dict(cls: type[T], d: dict | None, where: str = "", base: T | None = None) -> T:
    """Build config `cls` from a mapping merged into its defaults (or into `base`, an instance of `cls`).

    A nested mapping updates that field's current value (`dataclasses.replace`), so a partial
    override keeps every other default; unknown keys, values outside a `Literal` or outside a field's
    min/max, and non-mappings for nested configs raise ConfigError."""
    where = where or cls.__name__
    if d is None:
        return base if base is not None else cls()
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ConfigError(f"{where} should be a mapping; got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in {where}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in d.items():
        hint = hints.get(name)
        sub = _dataclass_in(hint)
        if value is None and _allows_none(hint):
            pass
        elif sub is not None and isinstance(value, dict):
            current = getattr(base, name) if base is not None else declared_default(fields[name])
            value = from_dict(sub, value, f"{where}.{name}", current if isinstance(current, sub) else None)
        elif sub is not None and not isinstance(value, sub):
            raise ConfigError(f"{where}.{name} should be a mapping of {sub.__name__} settings; got {value!r}")
        elif isinstance(value, list):
            value = tuple(value)
        _check(fields[name], hint, value, where)
        kwargs[name] = value
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"Bad values for {where}: {e}") from e


@dataclass(frozen=True)
class Setting:
    """One leaf setting of a config, as the CLI and the forms show it. `name` is dotted for nested
    configs (`kd.distill.epochs`)."""

    name: str
    kind: str  # int | float | bool | str | choice | tuple | json
    default: Any
    help: str = ""
    choices: tuple = ()
    item: type = str  # element type of a tuple setting
    min: float | None = None
    max: float | None = None


def _kind(hint: Any) -> tuple[str, type, tuple]:
    choices = choices_of(hint)
    if choices:
        return "choice", str, choices
    origin = typing.get_origin(hint) or hint
    if origin in (bool, int, float, str):
        return origin.__name__, str, ()
    if origin is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(args) == 1 and args[0] in (int, float, str):
            return "tuple", args[0], ()
    return "json", str, ()


def settings(cls: type, instance: Any = None, prefix: str = "") -> tuple[Setting, ...]:
    """Every leaf setting of config class `cls`, in declaration order, nested configs flattened.
    Defaults are those of `instance` when given, else each field's declared default (a nested
    default built by a factory shows its own values)."""
    hints = typing.get_type_hints(cls)
    out: list[Setting] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = getattr(instance, f.name) if instance is not None else declared_default(f)
        hint = hints[f.name]
        sub = _dataclass_in(hint)
        if sub is not None and isinstance(default, sub):
            out += settings(sub, default, f"{prefix}{f.name}.")
            continue
        kind, item, choices = _kind(hint)
        meta = f.metadata
        out.append(
            Setting(
                prefix + f.name, kind, default, meta.get("help", ""), choices, item, meta.get("min"), meta.get("max")
            )
        )
    return tuple(out)


def nest(flat: dict[str, Any]) -> dict:
    """{"kd.distill.epochs": 3} → {"kd": {"distill": {"epochs": 3}}}."""
    out: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    """Deep merge of two config mappings; `extra` wins."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
