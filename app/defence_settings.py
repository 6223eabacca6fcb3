"""A settings form generated from a defence's config dataclass (`Defense.config_class`).

Every field becomes one widget, chosen by its type hint: int → number input (step 1), float →
number input, bool → checkbox, str → a select box when the dataclass documents a closed set of
values (a `Literal` hint, or words in the field's comment that `__post_init__` accepts while it
rejects an arbitrary string) else a text input, tuple → comma-separated text, anything else →
JSON text. The field's source comment is the widget's help. Values are checked by the config
class itself when the job is submitted: a bad value raises `ConfigError` and nothing is queued.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

import streamlit as st

from kdcore.errors import ConfigError

_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*?#\s*(.+?)\s*$")
_WORD = re.compile(r"[A-Za-z][\w-]*")
_NOT_A_CHOICE = "__not-a-choice__"


@dataclass(frozen=True)
class Setting:
    """One field of a config dataclass, as the form shows it."""

    name: str
    kind: str  # int | float | bool | str | choice | tuple | json
    default: Any
    help: str = ""
    choices: tuple[str, ...] = ()
    item: type = str  # element type of a tuple field


def field_comments(config_class: type) -> dict[str, str]:
    """`name: type = default  # comment` → {name: comment}, read from the class's source."""
    try:
        source = inspect.getsource(config_class)
    except (OSError, TypeError):  # built at runtime, or no source shipped
        return {}
    return {m[1]: m[2] for m in map(_FIELD_LINE.match, source.splitlines()) if m}


def _accepts(config_class: type, name: str, value: Any) -> bool:
    try:
        config_class(**{name: value})
    except (ConfigError, TypeError, ValueError):
        return False
    return True


def _choices(config_class: type, name: str, hint: Any, default: str, comment: str) -> tuple[str, ...]:
    if typing.get_origin(hint) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(hint))
    if _accepts(config_class, name, _NOT_A_CHOICE):
        return ()  # free text (e.g. a layer name)
    words = dict.fromkeys([default, *_WORD.findall(comment)])
    found = tuple(w for w in words if _accepts(config_class, name, w))
    return found if len(found) >= 2 else ()


def _hint_dataclass(hint: Any) -> type | None:
    """The dataclass in a hint (`TrainConfig`, `TrainConfig | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)


def _declared_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _fields(config_class: type, instance: Any, prefix: str) -> list[Setting]:
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # an unresolvable annotation only costs the widget its type
        hints = {}
    comments = field_comments(config_class)
    out: list[Setting] = []
    for f in dataclasses.fields(config_class):
        if not f.init:
            continue
        default = getattr(instance, f.name) if instance is not None else _declared_default(f)
        hint = hints.get(f.name, type(default))
        sub = _hint_dataclass(hint)
        if sub is not None and dataclasses.is_dataclass(default):  # a nested config: its fields, prefixed
            out += _fields(sub, default, f"{prefix}{f.name}.")
            continue
        origin = typing.get_origin(hint) or hint
        comment = comments.get(f.name, "")
        kind, item, choices = "json", str, ()
        if origin is bool:
            kind = "bool"
        elif origin is int:
            kind = "int"
        elif origin is float:
            kind = "float"
        elif origin is str or origin is typing.Literal:
            choices = _choices(config_class, f.name, hint, str(default), comment)
            kind = "choice" if choices else "str"
        elif origin is tuple:
            args = [a for a in typing.get_args(hint) if a is not Ellipsis]
            kind, item = "tuple", (args[0] if args and args[0] in (int, float, str) else str)
        out.append(Setting(prefix + f.name, kind, default, comment, choices, item))
    return out


@cache
def settings_of(config_class: type) -> tuple[Setting, ...]:
    """The form's fields for a config dataclass, in declaration order; a nested config dataclass
    (e.g. `finetune: TrainConfig`) contributes its own fields as `finetune.epochs`, ... Defaults are
    those of `config_class()`, so a nested default built by a factory shows its own values."""
    if not dataclasses.is_dataclass(config_class):
        return ()
    try:
        instance = config_class()
    except (ConfigError, TypeError, ValueError):  # no usable defaults: fall back to the declared ones
        instance = None
    return tuple(_fields(config_class, instance, ""))


def parse_tuple(text: str, item: type, name: str) -> tuple:
    """'0.5, 1, 2' → (0.5, 1.0, 2.0) for item=float; '' → (). Raises ConfigError on a bad element."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        return tuple(item(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"{name} takes comma-separated {item.__name__} values, e.g. "
            f"{'0.5, 1' if item is not str else 'a, b'}; got {text!r}"
        ) from None


def to_param(s: Setting, raw: Any) -> Any:
    """A widget's value → the config value (raising ConfigError for text that does not parse)."""
    if s.kind == "tuple":
        return parse_tuple(raw, s.item, s.name)
    if s.kind == "json":
        try:
            return json.loads(raw) if str(raw).strip() else s.default
        except json.JSONDecodeError as e:
            raise ConfigError(f"{s.name} takes a JSON value; {raw!r} does not parse ({e.msg})") from None
    if s.kind == "int" and isinstance(raw, float) and raw.is_integer():
        return int(raw)
    return raw


def _text(value: Any, kind: str) -> str:
    if kind == "tuple":
        return ", ".join(str(v) for v in value)
    return json.dumps(value) if kind == "json" else str(value)


def _float_step(default: float) -> float:
    """A step of the default's order of magnitude (0.1 for 0.35, 0.001 for 1e-3, 1 for 4.0)."""
    x = abs(float(default))
    return 0.01 if x == 0 else 10.0 ** min(0, int(f"{x:e}".split("e")[1]))


def settings_ui(method: str, config_class: type, columns: int = 3) -> dict[str, Any]:
    """One widget per config field (keys `defset-<method>-<field>`); returns the raw widget values.

    Turn them into params with `params_from(config_class, raw)` when submitting."""
    settings = settings_of(config_class)
    if not settings:
        st.caption("This method has no settings.")
        return {}
    raw: dict[str, Any] = {}
    cols = st.columns(columns)
    for i, s in enumerate(settings):
        key, col, label = f"defset-{method}-{s.name}", cols[i % columns], s.name
        helptext = s.help or None
        if s.kind == "bool":
            raw[s.name] = col.checkbox(label, value=bool(s.default), key=key, help=helptext)
        elif s.kind == "int":
            raw[s.name] = col.number_input(label, value=int(s.default), step=1, key=key, help=helptext)
        elif s.kind == "float":
            raw[s.name] = col.number_input(
                label, value=float(s.default), step=_float_step(s.default), format="%g", key=key, help=helptext
            )
        elif s.kind == "choice":
            index = s.choices.index(s.default) if s.default in s.choices else 0
            raw[s.name] = col.selectbox(label, s.choices, index=index, key=key, help=helptext)
        else:
            hint = {"tuple": " (comma-separated)", "json": " (JSON)"}.get(s.kind, "")
            raw[s.name] = col.text_input(
                label + hint, value=_text(s.default, s.kind), key=key, help=helptext, placeholder="(empty)"
            )
    return raw


def params_from(config_class: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Widget values → the `params` dict of a defend job (every field, parsed; `a.b` → {"a": {"b": …}}).
    Raises ConfigError for text that does not parse."""
    by_name = {s.name: s for s in settings_of(config_class)}
    params: dict[str, Any] = {}
    for name, value in raw.items():
        *parents, leaf = name.split(".")
        node = params
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = to_param(by_name[name], value) if name in by_name else value
    return params
