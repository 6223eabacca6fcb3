"""A defense's settings form, generated from its config dataclass (`Defense.config_class`) by
`app.config_form`: the widgets, their choices, bounds and help come from the field metadata."""

from __future__ import annotations

from typing import Any

from app.config_form import config_form_ui, parse_tuple, settings_of, to_param, values_from
from kdcore.config import Setting

__all__ = ["Setting", "params_from", "parse_tuple", "settings_of", "settings_ui", "to_param"]


def settings_ui(method: str, config_class: type, columns: int = 3) -> dict[str, Any]:
    """One widget per config field (keys `defset-<method>-<field>`); returns the raw widget values.

    Turn them into params with `params_from(config_class, raw)` when submitting."""
    return config_form_ui(config_class, f"defset-{method}", columns=columns)


def params_from(config_class: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Widget values → the `params` dict of a defend job (every field, parsed; `a.b` → {"a": {"b": …}}).
    Raises ConfigError for text that does not parse."""
    return values_from(config_class, raw)
