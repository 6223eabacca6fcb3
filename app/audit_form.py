"""Form sections of the New-audit page: what the image uploads hold and what cannot be right about them,
trigger, hyperparameters (the model: `app.model_form`). Each returns values."""

from __future__ import annotations

import json
from dataclasses import fields

import streamlit as st

from app.config_form import config_form_ui, values_from
from app.state import show_error
from app.trigger_form import colour_ui, file_trigger_fields_ui, make_trigger, trigger_preview_ui
from app.uploads import image_summary_of
from kdcore.data.summary import ImageSetSummary, check_uploads
from kdcore.errors import KDCoreError
from kdcore.models.spec import ModelSpec
from kdcore.runs.configs import AuditConfig
from kdcore.triggers import TRIGGERS, Trigger
from kdcore.triggers.badnets import LOCATIONS


def image_set_ui(path: str | None) -> tuple[ImageSetSummary | None, bool]:
    """What the uploaded set at `path` holds, shown under its uploader: (summary, readable).
    A set that cannot be read at all is shown as an error and is not readable."""
    if not path:
        return None, True
    try:
        s = image_summary_of(str(path))
    except KDCoreError as e:
        show_error(e)
        return None, False
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
    return s, True


def upload_checks_ui(sets: dict[str, ImageSetSummary | None], spec: ModelSpec | None) -> bool:
    """Errors and warnings about the image sets together (and against the model); True when nothing
    is an error, so the audit may be submitted."""
    found = {slot: s for slot, s in sets.items() if s is not None}
    n, names = (spec.num_classes, tuple(spec.class_names)) if spec is not None else (None, ())
    findings = check_uploads(found, n, names)
    for f in findings:
        (st.error if f.level == "error" else st.warning)(f.message, icon="🚫" if f.level == "error" else "⚠️")
    return not any(f.level == "error" for f in findings)


FILE_FIELDS = {"patch": "image", "blend": "image", "triggered": "path", "recovered": "run"}  # kind → its required file


def trigger_ui(
    num_classes: int | None, input_shape: tuple[int, int, int] | None = None, unlabeled: list | None = None
) -> Trigger | None:
    """The known trigger (None when the user knows none, or it is not complete or valid yet), with a
    preview of a stamped image for the model's `input_shape` (on the first of the `unlabeled` uploads)."""
    if not st.toggle("I know the trigger (measures poison_acc and asr)", key="know_trigger"):
        st.caption(
            "Without a known trigger the audit still removes the backdoor and flags candidates; "
            "it cannot measure the attack success rate."
        )
        return None
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
            st.caption("Give the trigger's file to use it.")
            return None
    try:
        trigger = make_trigger(json.dumps(d))
    except KDCoreError as e:
        show_error(e)
        return None
    return trigger if trigger_preview_ui(trigger, input_shape, unlabeled) else None


def blind_ui(trigger: Trigger | None) -> dict:
    """{"blind": bool} for the audit config: judge the model as if the trigger were unknown (the
    trigger then only measures asr, for comparison). {} on an AuditConfig without the field."""
    if trigger is None:
        return {}
    blind = st.checkbox(
        "Blind audit (ignore the trigger when judging)",
        key="blind",
        help="The verdict is reached from label-free evidence only; the trigger still measures asr and poison_acc.",
    )
    if "blind" not in {f.name for f in fields(AuditConfig)}:
        return {}
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


def hyperparameters_ui() -> tuple[dict, dict]:
    """(kd config dict, top-level extras), starting from AuditConfig's defaults."""
    with st.expander("Hyperparameters (defaults follow the paper where it says)"):
        raw = config_form_ui(
            AuditConfig,
            "audit",
            only=tuple(HYPERPARAMETERS),
            labels={k: label for k, (label, _) in HYPERPARAMETERS.items()},
            keys={k: key for k, (_, key) in HYPERPARAMETERS.items()},
            columns=4,
        )
    d = values_from(AuditConfig, raw)
    return d.pop("kd"), d
