"""New audit: upload a suspect model and images, check them at once, submit an audit job.

Each section returns its value and what to fix (`app.section`): Start the audit stays disabled, with
the reason under it, while any section is in error, so no job starts without an input the user gave.
`?from=JOB` reopens a finished audit job here with its inputs filled in (`app.reopen`)."""

from pathlib import Path

import streamlit as st

from app.audit_form import blind_ui, hyperparameters_ui, image_set_ui, trigger_ui, upload_checks_ui
from app.jobs_client import audit_refusal, submit_audit
from app.model_form import model_ui
from app.reopen import reopen_ui, stored_input_ui
from app.section import Section, blocking
from app.state import show_error
from app.uploads import MODEL_TYPES, image_types, save_image_set, save_upload, upload_ui
from kdcore.errors import KDCoreError

st.title("New audit")
st.caption("Everything is stored in the data directory, so audits survive a restart of the app.")
reopened = reopen_ui()
sections: dict[str, Section] = {}  # section name → its value and what to fix, in the form's order

st.subheader("1 · The suspect model")
up = st.file_uploader(
    "Model: weights (.safetensors preferred, or a .pt / .pth state_dict), or a file that carries its own "
    "architecture (.onnx, torch.export .pt2, or a Hugging Face-style .zip: config.json + model.safetensors)",
    type=MODEL_TYPES,
    key="model_file",
)
stored_model = stored_input_ui(reopened, "model", "model") if up is None else None
model_path = upload_ui(up) if up is not None else Path(stored_model) if stored_model else None
model = sections["model"] = model_ui(model_path)
spec = model.value.choice.spec if model.value else None

st.subheader("2 · Images")
unl = st.file_uploader(
    "Unlabelled clean images (a .zip, or many image files) — required",
    type=["zip", *image_types()],
    accept_multiple_files=True,
    key="unlabeled_files",
)
paths: dict[str, str | None] = {"unlabeled": None}
try:
    paths["unlabeled"] = str(save_image_set(unl)) if unl else stored_input_ui(reopened, "unlabeled", "images")
except KDCoreError as e:
    sections["unlabelled images"] = Section(None, show_error(e))
else:
    sections["unlabelled images"] = image_set_ui(paths["unlabeled"])
summaries = {"unlabeled": sections["unlabelled images"].value}
for slot, what, label in (
    (
        "train",
        "training set",
        "Labelled training set, possibly poisoned (.zip with one folder per class) — enables "
        "poison-candidate detection and fine-tuning",
    ),
    ("test", "test set", "Labelled test set (.zip with one folder per class) — enables accuracy and ASR"),
):
    up_set = st.file_uploader(label, type=["zip"], key=f"{slot}_file")
    try:
        stored = stored_input_ui(reopened, slot, what) if up_set is None else None
        paths[slot] = str(save_upload(up_set.getvalue(), up_set.name)) if up_set else stored
    except KDCoreError as e:
        paths[slot], sections[what] = None, Section(None, show_error(e))
    else:
        sections[what] = image_set_ui(paths[slot])
    summaries[slot] = sections[what].value
sections["images"] = upload_checks_ui(summaries, spec)

st.subheader("3 · Known trigger (optional)")
trigger = sections["trigger"] = trigger_ui(spec.num_classes if spec else None, spec.input_shape if spec else None, unl)
blind = blind_ui(trigger.value)

st.subheader("4 · Settings")
hyper = sections["hyperparameters"] = hyperparameters_ui()
label = st.text_input("Name for this audit (optional)", key="audit_label", max_chars=80)

problems = blocking(sections)
cfg = None
if model.value and paths["unlabeled"] and not problems:
    kd, extra = hyper.value
    cfg = {
        "model": str(model.value.path),
        **model.value.choice.config,
        **({"layers": model.value.layers} if model.value.layers else {}),
        "unlabeled": paths["unlabeled"],
        "kd": kd,
        **extra,
        **blind,
        **{slot: paths[slot] for slot in ("train", "test") if paths[slot]},
        **({"trigger": trigger.value.to_dict()} if trigger.value is not None else {}),
    }
    if refusal := audit_refusal(cfg):  # sections that are right alone but not together (the store's check)
        problems.append(f"These inputs do not go together: {refusal}")
ready = cfg is not None and not problems
if st.button("Start the audit", type="primary", key="submit_audit", disabled=not ready) and ready:
    try:
        job = submit_audit(cfg, label=label or (up.name if up else model.value.path.name))
    except KDCoreError as e:
        show_error(e)
    else:
        st.switch_page("app_pages/jobs.py", query_params={"job": str(job.id)})
if problems:
    st.caption("  \n".join(f"🚫 {p}" for p in problems) + "  \nWarnings ⚠️ do not stop the audit.")
elif not ready:
    st.caption("Upload a model that loads and some unlabelled images to start.")
