"""Models: audit many models at once. Upload several models and the images they share; each gets a
blind audit (the parts of one job); one table ranks them by P(backdoor), each linking to its Results,
with a CSV export. `?job=ID` shows that job's table."""

import streamlit as st

from app.audit_form import hyperparameters_ui, image_set_ui, upload_checks_ui
from app.jobs_client import refusal
from app.models import models_config, models_jobs, models_ui, shared_spec, submit_models, table_ui
from app.section import Section, blocking
from app.state import job_title, note_opened, refuse_ui, show_error, store
from app.uploads import MODEL_TYPES, image_types, save_image_set, save_upload
from kdcore.errors import KDCoreError

st.title("Models")
st.caption(
    "Audit many models at once, e.g. every model in a team's registry or every download from a hub: each "
    "gets a blind audit on the same images, and one table ranks them by how likely each is backdoored."
)

with st.expander("Start an audit of several models", expanded="job" not in st.query_params):
    sections: dict[str, Section] = {}
    ups = st.file_uploader(
        "Models: files that carry their architecture (.safetensors saved by kdaudit, .onnx, torch.export .pt2, "
        "or a Hugging Face-style .zip)",
        type=MODEL_TYPES,
        accept_multiple_files=True,
        key="models_files",
    )
    models = sections["models"] = models_ui(ups)
    unl = st.file_uploader(
        "Unlabelled clean images (a .zip, or many image files) — required",
        type=["zip", *image_types()],
        accept_multiple_files=True,
        key="models_unlabeled",
    )
    paths: dict[str, str | None] = {"unlabeled": None}
    try:
        paths["unlabeled"] = str(save_image_set(unl)) if unl else None
    except KDCoreError as e:
        sections["unlabelled images"] = Section(None, show_error(e))
    else:
        sections["unlabelled images"] = image_set_ui(paths["unlabeled"])
    summaries = {"unlabeled": sections["unlabelled images"].value}
    for slot, what, label in (
        ("train", "training set", "Labelled training set, possibly poisoned (.zip, one folder per class) — optional"),
        ("test", "test set", "Labelled test set (.zip, one folder per class) — optional: each model's accuracy"),
    ):
        up = st.file_uploader(label, type=["zip"], key=f"models_{slot}")
        try:
            paths[slot] = str(save_upload(up.getvalue(), up.name)) if up else None
        except KDCoreError as e:
            paths[slot], sections[what] = None, Section(None, show_error(e))
        else:
            sections[what] = image_set_ui(paths[slot])
        summaries[slot] = sections[what].value
    sections["images"] = upload_checks_ui(summaries, shared_spec(models.value))
    hyper = sections["hyperparameters"] = hyperparameters_ui()
    label = st.text_input("Name for this audit (optional)", key="models_label", max_chars=80)

    problems = blocking(sections)
    cfg = None
    if models.value and paths["unlabeled"] and not problems:
        cfg = models_config(models.value, paths, *hyper.value)
        if why := refusal("audit_many", cfg):
            problems.append(f"These inputs do not go together: {why}")
    ready = cfg is not None and not problems
    if st.button("Audit the models", type="primary", key="submit_models", disabled=not ready) and ready:
        try:
            job = submit_models(cfg, label=label or f"{len(models.value)} models")
        except KDCoreError as e:
            show_error(e)
        else:
            st.query_params["job"] = str(job.id)
            st.rerun()
    if problems:
        st.caption("  \n".join(f"🚫 {p}" for p in problems))
    elif not ready:
        st.caption("Upload models that load and some unlabelled images to start.")

jobs = models_jobs()
ids = [j.id for j in jobs]
wanted = st.query_params.get("job")
if wanted and wanted.isdigit() and int(wanted) not in ids:
    refuse_ui(int(wanted))  # another user's audit: said so, and the page stops
if not jobs:
    st.info("No audit of several models yet.")
    st.stop()
index = ids.index(int(wanted)) if wanted and wanted.isdigit() and int(wanted) in ids else 0
job = st.selectbox("Audit of several models", jobs, index=index, format_func=job_title, key="models_job")
st.query_params["job"] = str(job.id)
note_opened(job)


@st.fragment(run_every=None if job.terminal else 2.0)  # refreshed while its audits run
def live_table() -> None:
    current = store().get(job.id)
    table_ui(current)
    if current.terminal:
        st.caption("All audits have ended.")


live_table()
