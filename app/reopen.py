"""Reopen a finished audit job in the New-audit form: its inputs filled in, to change and submit again.

The Jobs page links to `app_pages/new_audit.py?from=<job id>`. On the first run with that id,
`reopen_ui` writes the job's settings into the form's widget keys (model fields, layers, trigger,
hyperparameters, label) and remembers the inputs already stored in the data directory (model, image
sets). The page uses a stored input until the user uploads another one in its slot; labelled sets
can be dropped with their checkbox. Retry (same inputs, same job kind) stays on the Jobs page.

A file-based trigger (pattern image, blend image, triggered set) cannot be put back into a file
uploader: its kind and numbers are filled in, and the form asks for the file again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app.audit_form import HYPERPARAMETERS
from app.config_form import settings_of
from app.model_form import TIMM, TV
from app.state import access
from kdcore.errors import AccessError, KDCoreError
from kdcore.runs.configs import AuditConfig

SLOTS = ("model", "unlabeled", "train", "test")


@dataclass(frozen=True)
class Reopened:
    job_id: int
    paths: dict  # slot → the stored input's path, for the slots the job had and that still exist


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _joined(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def form_values(config: dict, label: str = "") -> dict:
    """An audit job's config → {widget key: value} of the New-audit form."""
    v: dict = {"audit_label": label}
    arch = config.get("arch") or ""
    for prefix, option, key in (("timm:", TIMM, "timm_name"), ("tv:", TV, "tv_name")):
        if arch.startswith(prefix):
            v["arch"], v[key] = option, arch.removeprefix(prefix)
    if arch and "arch" not in v:
        v["arch"] = arch
    if config.get("num_classes"):
        v["num_classes"] = int(config["num_classes"])
    for key in ("input_shape", "mean", "std", "class_names"):
        if config.get(key):
            v[key] = _joined(config[key])
    for pair in config.get("layers") or ():
        role, _, name = pair.partition("=")
        v[f"layer_{role.strip()}"] = name.strip()
    v.update(_trigger_values(config.get("trigger")))
    v["blind"] = bool(config.get("blind"))  # the job's choice of a verdict beside its trigger
    kinds = {s.name: s.kind for s in settings_of(AuditConfig)}
    for name, (_, key) in HYPERPARAMETERS.items():
        value = _get(config, name)
        if value is not None:
            v[key] = float(value) if kinds.get(name) == "float" else value
    return v


_TRIGGER_KEYS = {  # trigger kind → {trigger field: widget key} (app.audit_form.trigger_ui, app.trigger_form)
    "badnets": {"size": "trigger_size", "location": "trigger_location", "margin": "trigger_margin"},
    "blended": {"alpha": "trigger_alpha", "pattern_seed": "trigger_seed"},
    "sig": {"delta": "trigger_delta", "frequency": "trigger_freq"},
    "wanet": {"grid_size": "trigger_grid_size", "strength": "trigger_strength", "grid_seed": "trigger_grid_seed"},
    "patch": {
        "alpha": "trigger_patch_alpha",
        "location": "tp_loc",
        "margin": "trigger_patch_margin",
        "x": "trigger_patch_x",
        "y": "trigger_patch_y",
    },
    "blend": {"alpha": "trigger_blend_alpha"},
    "recovered": {"run": "trigger_rec_run"},
}


def _trigger_values(t: dict | None) -> dict:
    if not t:
        return {"know_trigger": False}
    kind = t.get("kind", "")
    v = {"know_trigger": True, "trigger_kind": kind, "trigger_source": -1 if t.get("source") is None else t["source"]}
    v[f"trigger_target_{kind}" if kind == "recovered" else "trigger_target"] = t.get("target", 0)
    for name, key in _TRIGGER_KEYS.get(kind, {}).items():
        if t.get(name) is not None:
            v[key] = t[name]
    if kind == "badnets" and t.get("color") is not None:
        v["trigger_color"] = "#" + "".join(f"{int(c):02X}" for c in t["color"])
    if kind == "patch":
        v["trigger_patch_where"] = "x, y" if t.get("x") is not None else "a corner"
    return v


def reopen_ui() -> Reopened | None:
    """The job named by `?from=ID`, its values written into the form once; None when there is none."""
    wanted = st.query_params.get("from")
    if not wanted:
        st.session_state.pop("_reopened", None)  # reopening the same job later fills the form in again
        return None
    try:  # the owner's (or an admin's) act: it puts the job's stored inputs into this user's form
        first = st.session_state.get("_reopened") != wanted
        job = access().open(wanted, "manage", "reopened", record=first)
    except AccessError as e:
        st.error(f"{e} The form starts empty.", icon="🔒")
        return None
    except KDCoreError:
        st.warning(f"There is no job {wanted} to reopen; the form starts empty.")
        return None
    if job.kind != "audit":
        st.warning(f"Job #{job.id} is a {job.kind} job; only audit jobs reopen in this form.")
        return None
    paths = {slot: job.config.get(slot) for slot in SLOTS if job.config.get(slot)}
    paths = {slot: p for slot, p in paths.items() if Path(p).exists()}
    values = form_values(job.config, job.label)
    if st.session_state.get("_reopened") != wanted:
        st.session_state["_reopened"] = wanted
        st.session_state.update(values)
        if "model" in paths:
            st.session_state["_model_for"] = paths["model"]  # so the model form keeps the values above
    else:  # the Jobs page's 2-s refresh can land just after the switch to this page, and Streamlit then
        # drops this page's widget values as another page's: put back the job's value of each one gone (a
        # value the user changed is still there and is kept)
        st.session_state.update({k: v for k, v in values.items() if k not in st.session_state})
    st.info(
        f"Reopened job #{job.id} ({job.state}): its inputs and settings are filled in. Change what you need "
        "and start the audit again; an upload replaces the stored file in its slot.",
        icon="↩️",
    )
    return Reopened(job.id, paths)


def stored_input_ui(reopened: Reopened | None, slot: str, what: str) -> str | None:
    """The reopened job's stored input for `slot` (with a checkbox to drop it), or None."""
    if reopened is None or slot not in reopened.paths:
        return None
    path = reopened.paths[slot]
    keep = st.checkbox(
        f"Use the {what} from job #{reopened.job_id}: {Path(path).name}", value=True, key=f"reopen_use_{slot}"
    )
    return path if keep else None
