"""A Streamlit form generated from a config dataclass: one widget per setting, from the same field
metadata (`kdcore.config.setting`, `Literal` hints) that the CLI flags are generated from.

int → number input (step 1), float → number input, bool → checkbox, `Literal` → select box,
str → text input, tuple → comma-separated text, anything else → JSON text; `min`/`max` bound the
number inputs and the field's help is the widget's help. Values are checked by the config class
when the job is submitted: a bad value raises `ConfigError` and nothing is queued.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import streamlit as st

from kdcore.config import Setting, nest, settings
from kdcore.errors import ConfigError


@cache
def settings_of(config_class: type) -> tuple[Setting, ...]:
    """The form's fields for a config dataclass, in declaration order, nested configs flattened
    (`finetune.epochs`); defaults are the declared ones (a factory-built nested default shows its own)."""
    return settings(config_class)


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


def setting_ui(s: Setting, col, key: str, label: str) -> Any:
    """One widget for one setting, in column `col`; returns its raw value."""
    helptext = s.help or None
    if s.kind == "bool":
        return col.checkbox(label, value=bool(s.default), key=key, help=helptext)
    if s.kind in ("int", "float"):
        cast = int if s.kind == "int" else float
        lo, hi = (None if v is None else cast(v) for v in (s.min, s.max))
        step = 1 if s.kind == "int" else _float_step(s.default)
        fmt = None if s.kind == "int" else "%g"
        return col.number_input(label, lo, hi, value=cast(s.default), step=step, format=fmt, key=key, help=helptext)
    if s.kind == "choice":
        index = s.choices.index(s.default) if s.default in s.choices else 0
        return col.selectbox(label, s.choices, index=index, key=key, help=helptext)
    hint = {"tuple": " (comma-separated)", "json": " (JSON)"}.get(s.kind, "")
    return col.text_input(label + hint, value=_text(s.default, s.kind), key=key, help=helptext, placeholder="(empty)")


def config_form_ui(
    config_class: type,
    key: str,
    *,
    only: tuple[str, ...] | None = None,
    labels: dict[str, str] | None = None,
    keys: dict[str, str] | None = None,
    columns: int = 3,
) -> dict[str, Any]:
    """One widget per setting of `config_class` (or those named in `only`, in that order), keyed
    `<key>-<setting>` unless `keys` names it; returns the raw widget values by setting name.
    Turn them into a config mapping with `values_from(config_class, raw)`."""
    by_name = {s.name: s for s in settings_of(config_class)}
    chosen = [by_name[n] for n in only] if only is not None else list(by_name.values())
    if not chosen:
        st.caption("This method has no settings.")
        return {}
    cols = st.columns(columns)
    raw: dict[str, Any] = {}
    for i, s in enumerate(chosen):
        widget_key = (keys or {}).get(s.name, f"{key}-{s.name}")
        raw[s.name] = setting_ui(s, cols[i % columns], widget_key, (labels or {}).get(s.name, s.name))
    return raw


def values_from(config_class: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Widget values → a nested config mapping (every setting parsed; `a.b` → {"a": {"b": …}}).
    Raises ConfigError for text that does not parse."""
    by_name = {s.name: s for s in settings_of(config_class)}
    return nest({name: to_param(by_name[name], v) if name in by_name else v for name, v in raw.items()})
