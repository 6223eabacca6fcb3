"""Home: what the tool does, the audits so far, and the built-in demo."""

import streamlit as st

from app.jobs_client import submit_demo
from app.state import STATE_ICON, access, fmt_duration, fmt_time, show_error
from kdcore.errors import KDCoreError

st.title("🛡️ kdaudit — is this model backdoored?")
st.markdown(
    "Upload a classifier you did not train and some **unlabelled clean images**. kdaudit distils it into a "
    "clean student, **flags the training samples** on which the two disagree (poison candidates, ranked for "
    "your review), fine-tunes on what is left, and shows the evidence side by side: accuracy and attack "
    "success rate, confusion matrices, Grad-CAM and activation norms. Method: Yoshida & Fujino, AISec 2020."
)

st.subheader("Try it on the built-in demo")
st.caption(
    "Fashion-MNIST with the paper's CNN. The attacker stamps a small white patch in the lower-right corner of "
    "training images and relabels them *Sneaker*; the audit finds and removes them, and judges the model as "
    "if the trigger were unknown (the verdict)."
)
c1, c2, _ = st.columns([1, 1, 2])
clicked = None
if c1.button("▶ Run the demo audit (quick, ~4 min)", type="primary", key="demo_quick"):
    clicked = True
if c2.button("▶ Run the full demo (50k images, ~30 min on CPU)", key="demo_full"):
    clicked = False
if clicked is not None:
    try:
        job = submit_demo(quick=clicked)
    except KDCoreError as e:
        show_error(e)
    else:
        st.switch_page("app_pages/jobs.py", query_params={"job": str(job.id)})

st.subheader("Audits so far")
jobs = access().jobs()
if not jobs:
    st.info("No audits yet. Run the demo above or start one under **New audit**.")
for j in jobs[:50]:
    cols = st.columns([0.5, 3, 1.4, 1.2, 1.2, 1.4])
    cols[0].write(f"**#{j.id}**")
    cols[1].write(f"{j.kind} {('— ' + j.label) if j.label else ''}")
    cols[2].write(f"{STATE_ICON.get(j.state, '')} {j.state}")
    cols[3].write(fmt_time(j.created_at))
    cols[4].write(fmt_duration(j.elapsed()))
    if j.state == "succeeded" and j.kind == "defend":
        cols[5].page_link("app_pages/defenses.py", label="Defenses →", query_params={"job": str(j.id)})
    elif j.state == "succeeded" and j.kind != "sweep":
        cols[5].page_link("app_pages/results.py", label="Results →", query_params={"job": str(j.id)})
    elif j.state == "succeeded":
        cols[5].page_link("app_pages/results.py", label="Curves →", query_params={"job": str(j.id)})
    else:
        cols[5].page_link("app_pages/jobs.py", label="Job →", query_params={"job": str(j.id)})
