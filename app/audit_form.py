"""Form sections of the New-audit page: what the image uploads hold and what cannot be right about them,
trigger, hyperparameters (the model: `app.model_form`). Each returns a `Section`: its value, and what
to fix when the user's input cannot be used (the page starts no audit while one is left)."""

from __future__ import annotations

import json

import streamlit as st

from app.config_form import config_form_ui, values_from
from app.section import Section
from app.state import show_error
from app.trigger_form import colour_ui, file_trigger_fields_ui, make_trigger, trigger_preview_ui
from app.uploads import image_summary_of
from kdcore.config import from_dict
from kdcore.data.summary import ImageSetSummary, check_uploads
from kdcore.errors import KDCoreError
from kdcore.models.spec import ModelSpec
from kdcore.pipeline import KDConfig
from kdcore.runs.configs import AuditConfig
from kdcore.triggers import TRIGGERS, Trigger
from kdcore.triggers.badnets import LOCATIONS


def image_set_ui(path: str | None) -> Section[ImageSetSummary | None]:
    """What the uploaded set at `path` holds, shown under its uploader. A set that cannot be read at
    all is shown as an error: the section's problem."""
    if not path:
        return Section(None)
    try:
        s = image_summary_of(str(path))
    except KDCoreError as e:
        return Section(None, show_error(e))
    counts = ", ".join(f"{name}: {n:,}" for name, n in s.folders[:12]) + (" …" if len(s.folders) > 12 else "")
    where = (
        f"{len(s.folders)} class folders ({counts})"
        if s.classes
        else (f"{len(s.folders)} folders, {s.at_top:,} at the top level" if s.folders else "all at the top level")
    )
    sizes = ", ".join(f"{size} ×{n:,}" for size, n in s.sizes[:4]) or "none readable"
    st.caption(
        f"Found in **{s.name}**: {s.images:,} images, {where} · sizes {sizes} "
        f"(from {s.headers_read:,} of {s.images:,} headers) · {s.skipped_total:,} file(s) skipped"
    )
    if s.skipped_total:
        with st.expander(f"Skipped files in {s.name} ({s.skipped_total:,})"):
            st.text("\n".join(s.skipped) + ("\n…" if s.skipped_total > len(s.skipped) else ""))
    return Section(s)


def upload_checks_ui(sets: dict[str, ImageSetSummary | None], spec: ModelSpec | None) -> Section[None]:
    """Errors and warnings about the image sets together (and against the model); the first error
    is the problem (warnings do not stop the audit)."""
    found = {slot: s for slot, s in sets.items() if s is not None}
    n, names = (spec.num_classes, tuple(spec.class_names)) if spec is not None else (None, ())
    findings = check_uploads(found, n, names)
    for f in findings:
        (st.error if f.level == "error" else st.warning)(f.message, icon="🚫" if f.level == "error" else "⚠️")
    errors = [f.message for f in findings if f.level == "error"]
    more = f" (and {len(errors) - 1} more marked 🚫 above)" if len(errors) > 1 else ""
    return Section(None, errors[0] + more if errors else "")


FILE_FIELDS = {"patch": "image", "blend": "image", "triggered": "path", "recovered": "run"}  # kind → its required file


NO_TRIGGER_FILE = "Give the trigger's file to use it."


def trigger_ui(
    num_classes: int | None, input_shape: tuple[int, int, int] | None = None, unlabeled: list | None = None
) -> Section[Trigger | None]:
    """The known trigger (None when the user knows none), with a preview of a stamped image for the
    model's `input_shape` (on the first of the `unlabeled` uploads). A trigger that is not complete or
    cannot be used is the section's problem, never "no trigger"."""
    if not st.toggle("I know the trigger (measures poison_acc and asr)", key="know_trigger"):
        st.caption(
            "Without a known trigger the audit still removes the backdoor and flags candidates; "
            "it cannot measure the attack success rate."
        )
        return Section(None)
    kinds = sorted(TRIGGERS)
    c1, c2, c3 = st.columns(3)
    kind = c1.selectbox("Trigger kind", kinds, key="trigger_kind")
    lowest = -1 if kind == "recovered" else 0
    target = c2.number_input(
        "Target class" + (" (−1 = the flagged or most anomalous)" if lowest else ""),
        lowest,
        max((num_classes or 10) - 1, 0),
        value=lowest,
        key=f"trigger_target_{kind}" if lowest else "trigger_target",
    )
    source = c3.number_input(
        "Source class (−1 = all classes flip)", -1, max((num_classes or 10) - 1, 0), value=-1, key="trigger_source"
    )
    d: dict = {"kind": kind, "target": int(target), "source": None if source < 0 else int(source)}
    if kind == "badnets":
        c4, c5, c6, c7 = st.columns(4)
        d["size"] = int(c4.number_input("Patch size (px)", 1, 64, 3, key="trigger_size"))
        d["location"] = c5.selectbox("Location", LOCATIONS, key="trigger_location")
        d["margin"] = int(c6.number_input("Margin (px)", 0, 64, 1, key="trigger_margin"))
        d["color"] = colour_ui(c7, "Colour", "#FFFFFF", key="trigger_color")
    elif kind == "blended":
        c4, c5 = st.columns(2)
        d["alpha"] = float(c4.slider("Blend alpha", 0.01, 1.0, 0.1, key="trigger_alpha"))
        d["pattern_seed"] = int(c5.number_input("Pattern seed", 0, 2**31 - 1, 0, key="trigger_seed"))
    elif kind == "sig":
        c4, c5 = st.columns(2)
        d["delta"] = float(c4.slider("Amplitude Δ (pixel levels)", 1, 255, 20, key="trigger_delta"))
        d["frequency"] = float(c5.number_input("Frequency (cycles per width)", 0.5, 64.0, 6.0, key="trigger_freq"))
    elif kind == "wanet":
        c4, c5, c6 = st.columns(3)
        d["grid_size"] = int(c4.number_input("Warp grid size k", 2, 32, 4, key="trigger_grid_size"))
        d["strength"] = float(c5.number_input("Warp strength s", 0.0, 10.0, 1.0, key="trigger_strength"))
        d["grid_seed"] = int(c6.number_input("Grid seed", 0, 2**31 - 1, 0, key="trigger_grid_seed"))
    elif kind in FILE_FIELDS:
        file_trigger_fields_ui(kind, d)
        if not d[FILE_FIELDS[kind]]:
            st.caption(NO_TRIGGER_FILE)
            return Section(None, f"{NO_TRIGGER_FILE} Or turn off “I know the trigger” to audit without one.")
    try:
        trigger = make_trigger(json.dumps(d))
    except KDCoreError as e:
        return Section(None, show_error(e))
    problem = trigger_preview_ui(trigger, input_shape, unlabeled)
    return Section(None, problem) if problem else Section(trigger)


def blind_ui(trigger: Trigger | None) -> dict:
    """{"blind": bool} for the audit config. Every audit is judged (the verdict); with a trigger, the
    trigger is by default one more piece of evidence (measured on teacher and student), or, ticked, the
    model is judged as if the trigger were unknown (the trigger then only measures asr and poison_acc).
    {} without a trigger."""
    if trigger is None:
        return {}
    blind = st.checkbox(
        "Judge the model as if the trigger were unknown (blind)",
        key="blind",
        help="Every audit ends with a verdict: is the model backdoored, towards which class? By default the trigger "
        "you gave is one piece of its evidence: if it sends the teacher's images to the target but not the "
        "distilled student's, the model is backdoored. Ticked, the verdict uses only evidence that needs no "
        "trigger (Neural Cleanse, activation clustering, the disagreements), as it must for a model you "
        "suspect of an unknown backdoor; your trigger then only measures asr and poison_acc.",
    )
    return {"blind": bool(blind)}


# The audit settings the form shows: setting → (label, widget key). Defaults, bounds and help come
# from AuditConfig's fields (kdcore.config.setting), never from here.
HYPERPARAMETERS = {
    "kd.distill.epochs": ("Distillation epochs", "kd_epochs"),
    "kd.distill.temperature": ("Temperature T", "temperature"),
    "kd.distill.lr": ("Distillation lr (Adam)", "kd_lr"),
    "kd.distill.batch_size": ("Batch size", "batch_size"),
    "kd.finetune.epochs": ("Fine-tuning epochs (max)", "ft_epochs"),
    "kd.finetune.lr": ("Fine-tuning lr", "ft_lr"),
    "max_unlabeled": ("Use at most N unlabelled images (0 = all)", "max_unlabeled"),
    "seed": ("Seed", "seed"),
    "kd.distill.augment": ("Augment unlabelled images (±2 px shifts; slower)", "augment"),
}


def hyperparameters_ui() -> Section[tuple[dict, dict] | None]:
    """(kd config dict, top-level extras), starting from AuditConfig's defaults; values the job's
    config would refuse are refused here, under the fields."""
    with st.expander("Hyperparameters (defaults follow the paper where it says)"):
        raw = config_form_ui(
            AuditConfig,
            "audit",
            only=tuple(HYPERPARAMETERS),
            labels={k: label for k, (label, _) in HYPERPARAMETERS.items()},
            keys={k: key for k, (_, key) in HYPERPARAMETERS.items()},
            columns=4,
        )
    try:
        d = values_from(AuditConfig, raw)
        from_dict(KDConfig, d["kd"])  # the checks the store makes of these values when the job is submitted
    except KDCoreError as e:
        return Section(None, show_error(e))
    return Section((d.pop("kd"), d))
