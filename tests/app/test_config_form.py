"""The form generated from a config class (app.config_form): the audit form's hyperparameters and a
defense's settings start at the dataclass defaults, read back from the rendered widgets."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from app.audit_form import HYPERPARAMETERS
from kdcore.config import from_dict, settings
from kdcore.runs.configs import AuditConfig


def _audit_form() -> None:
    import streamlit as st

    from app.audit_form import hyperparameters_ui

    hyper = hyperparameters_ui()
    st.session_state["result"] = hyper.value
    st.session_state["problem"] = hyper.problem


def test_audit_form_defaults_are_the_dataclass_defaults():
    at = AppTest.from_function(_audit_form).run(timeout=60)
    assert not at.exception, at.exception
    defaults = {s.name: s.default for s in settings(AuditConfig)}
    widgets = {w.key: w.value for kind in ("number_input", "checkbox") for w in at.get(kind)}
    for name, (_, key) in HYPERPARAMETERS.items():
        assert widgets[key] == defaults[name], (name, widgets[key], defaults[name])
    assert at.session_state["problem"] == ""
    kd, extra = at.session_state["result"]
    cfg = from_dict(AuditConfig, {"model": "m.pt", "unlabeled": "u", "kd": kd, **extra})
    assert cfg == AuditConfig(model="m.pt", unlabeled="u")  # the form's values resolve to the defaults


def _bcu_form() -> None:
    import streamlit as st

    from app.defense_settings import params_from, settings_ui
    from kdcore.defenses import BCU

    st.session_state["params"] = params_from(BCU.config_class, settings_ui("bcu", BCU.config_class))


def test_defense_form_renders_choices_and_changes_one_setting():
    at = AppTest.from_function(_bcu_form).run(timeout=60)
    assert not at.exception, at.exception
    schedule = at.selectbox(key="defset-bcu-schedule")
    assert list(schedule.options) == ["adaptive", "uniform"] and schedule.value == "adaptive"
    assert at.number_input(key="defset-bcu-epochs").value == 10
    schedule.set_value("uniform").run()
    assert at.session_state["params"]["schedule"] == "uniform" and at.session_state["params"]["epochs"] == 10
