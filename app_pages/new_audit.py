"""New audit: upload a suspect model and images, check them at once, submit an audit job.

`?from=JOB` reopens a finished audit job here with its inputs filled in (`app.reopen`)."""

import json
from pathlib import Path

import streamlit as st

from app.audit_form import blind_ui, hyperparameters_ui, image_set_ui, trigger_ui, upload_checks_ui
from app.jobs_client import submit_audit
from app.model_form import layer_config, layers_ui, model_check_ui, model_spec_ui, stored_spec_ui
from app.reopen import reopen_ui, stored_input_ui
from app.state import show_error
from app.uploads import MODEL_TYPES, check_model, image_types, save_image_set, save_upload
from kdcore.errors import KDCoreError

st.title("New audit")
st.caption("Everything is stored in the data directory, so audits survive a restart of the app.")
reopened = reopen_ui()

st.subheader("1 · The suspect model")
up = st.file_uploader(
    "Model: weights (.safetensors preferred, or a .pt / .pth state_dict), or a file that carries its own "
    "architecture (.onnx, torch.export .pt2, or a Hugging Face-style .zip: config.json + model.safetensors)",
    type=MODEL_TYPES,
    key="model_file",
)
model_path = choice = None
layers: list[str] = []
stored_model = stored_input_ui(reopened, "model", "model") if up is None else None
if up is not None or stored_model:
    model_path = save_upload(up.getvalue(), up.name) if up is not None else Path(stored_model)
    readable, stored = stored_spec_ui(model_path)
    if readable:
        choice = model_spec_ui(stored, model_path)
    else:
        model_path = None
    if choice is not None:
        try:
            check = check_model(str(model_path), json.dumps(choice.spec.to_dict()))
        except KDCoreError as e:
            show_error(e)
            choice = None
        else:
            model_check_ui(check, model_path)
            layers = layer_config(layers_ui(check.layers))
spec = choice.spec if choice else None

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
    show_error(e)
summaries, readable = {}, True
summaries["unlabeled"], ok = image_set_ui(paths["unlabeled"])
readable &= ok
for slot, label in (
    (
        "train",
        "Labelled training set, possibly poisoned (.zip with one folder per class) — enables "
        "poison-candidate detection and fine-tuning",
    ),
    ("test", "Labelled test set (.zip with one folder per class) — enables accuracy and ASR"),
):
    up_set = st.file_uploader(label, type=["zip"], key=f"{slot}_file")
    what = "training set" if slot == "train" else "test set"
    paths[slot] = str(save_upload(up_set.getvalue(), up_set.name)) if up_set else stored_input_ui(reopened, slot, what)
    summaries[slot], ok = image_set_ui(paths[slot])
    readable &= ok
sets_ok = upload_checks_ui(summaries, spec if choice else None) and readable

st.subheader("3 · Known trigger (optional)")
trigger = trigger_ui(spec.num_classes if spec else None, spec.input_shape if spec else None, unl)
blind = blind_ui(trigger)

st.subheader("4 · Settings")
kd, extra = hyperparameters_ui()
label = st.text_input("Name for this audit (optional)", key="audit_label", max_chars=80)

ready = bool(model_path and spec and paths["unlabeled"])
if st.button("Start the audit", type="primary", key="submit_audit", disabled=not (ready and sets_ok)):
    try:
        cfg = {
            "model": str(model_path),
            **choice.config,
            **({"layers": layers} if layers else {}),
            "unlabeled": paths["unlabeled"],
            "kd": kd,
            **extra,
            **blind,
            **{slot: paths[slot] for slot in ("train", "test") if paths[slot]},
        }
        if trigger is not None:
            cfg["trigger"] = trigger.to_dict()
        job = submit_audit(cfg, label=label or (up.name if up else Path(str(model_path)).name))
    except KDCoreError as e:
        show_error(e)
    else:
        st.switch_page("app_pages/jobs.py", query_params={"job": str(job.id)})
elif not ready:
    st.caption("Upload a model that loads and some unlabelled images to start.")
elif not sets_ok:
    st.caption("Fix what is marked 🚫 above to start; warnings ⚠️ do not stop the audit.")
