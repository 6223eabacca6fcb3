"""New audit: upload a suspect model and images, check the model at once, submit an audit job."""

import json

import streamlit as st

from app.audit_form import blind_ui, hyperparameters_ui, trigger_ui
from app.jobs_client import submit_audit
from app.model_form import layer_config, layers_ui, model_check_ui, model_spec_ui, stored_spec_ui
from app.state import show_error
from app.uploads import MODEL_TYPES, check_model, image_types, save_image_set, save_upload
from kdcore.errors import KDCoreError

st.title("New audit")
st.caption("Everything is stored in the data directory, so audits survive a restart of the app.")

st.subheader("1 · The suspect model")
up = st.file_uploader(
    "Model: weights (.safetensors preferred, or a .pt / .pth state_dict), or a file that carries its own "
    "architecture (.onnx, torch.export .pt2, or a Hugging Face-style .zip: config.json + model.safetensors)",
    type=MODEL_TYPES,
    key="model_file",
)
model_path = choice = None
layers: list[str] = []
if up is not None:
    model_path = save_upload(up.getvalue(), up.name)
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
train = st.file_uploader(
    "Labelled training set, possibly poisoned (.zip with one folder per class) — enables "
    "poison-candidate detection and fine-tuning",
    type=["zip"],
    key="train_file",
)
test = st.file_uploader(
    "Labelled test set (.zip with one folder per class) — enables accuracy and ASR", type=["zip"], key="test_file"
)

st.subheader("3 · Known trigger (optional)")
trigger = trigger_ui(spec.num_classes if spec else None, spec.input_shape if spec else None, unl)
blind = blind_ui(trigger)

st.subheader("4 · Settings")
kd, extra = hyperparameters_ui()
label = st.text_input("Name for this audit (optional)", key="audit_label", max_chars=80)

if st.button("Start the audit", type="primary", key="submit_audit", disabled=not (model_path and spec and unl)):
    try:
        cfg = {
            "model": str(model_path),
            **choice.config,
            **({"layers": layers} if layers else {}),
            "unlabeled": str(save_image_set(unl)),
            "kd": kd,
            **extra,
            **blind,
        }
        if train is not None:
            cfg["train"] = str(save_upload(train.getvalue(), train.name))
        if test is not None:
            cfg["test"] = str(save_upload(test.getvalue(), test.name))
        if trigger is not None:
            cfg["trigger"] = trigger.to_dict()
        job = submit_audit(cfg, label=label or (up.name if up else ""))
    except KDCoreError as e:
        show_error(e)
    else:
        st.switch_page("pages/jobs.py", query_params={"job": str(job.id)})
elif not (model_path and spec and unl):
    st.caption("Upload a model that loads and some unlabelled images to start.")
