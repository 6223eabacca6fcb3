"""Defenses: run other backdoor defenses on a finished audit and compare them with the core method.

Repairers (BCU, ℓ∞ pruning, fine-pruning, NAD) return a repaired model, detectors (activation
clustering) flag training samples, inspectors (Neural Cleanse) report evidence about the model.
Each runs as a `defend` job on the audit's model and data; its evidence is shown below the table.
"""

import streamlit as st

from app.defense_evidence import audit_evidence_ui, evidence_ui, pick_defense_ui
from app.defenses import (
    active_jobs_ui,
    compare_rows,
    compare_ui,
    defense_form_ui,
    failed_jobs_ui,
    finished_defenses,
    focus_from_url,
    layer_problems_ui,
)
from app.recovered_ui import use_recovered_ui
from app.results import link_ui, load_report
from app.state import job_picker_ui, show_error
from kdcore.errors import KDCoreError

st.title("🧪 Defenses")
st.caption(
    "How do published backdoor defenses do on the same suspect model, data and trigger as the core method "
    "(distil on unlabelled images, remove the samples teacher and student disagree on, fine-tune)? Methods "
    "marked 🏷️ are labelled-data baselines: they need labelled clean images, which the core method does not."
)

try:
    focus = focus_from_url()
    source = job_picker_ui(kinds=("demo", "audit"), label="Source audit")
    if source is None:
        st.stop()
    source_report = load_report(source.run_dir)

    st.subheader("Run a defense")
    layer_problems_ui(source)
    defense_form_ui(source)
    active_jobs_ui(source)
    failed_jobs_ui(source)

    st.subheader("Compare")
    done = finished_defenses(source)
    if source_report is None:
        st.warning(f"Job #{source.id} has no report.json: only the defenses are listed.")
    compare_ui(compare_rows(source_report, done))
    if not done:
        st.info("No other defense has run on this audit yet: run one above.")
    link_ui("app_pages/results.py", "📊 The core method's full results", source.id)

    st.subheader("Evidence")
    own = audit_evidence_ui(source, source_report)
    picked = pick_defense_ui(done, focus)
    if picked is not None:
        evidence_ui(*picked)
        if picked[1].get("method") == "neural-cleanse":
            use_recovered_ui(source, picked[0])
    elif not own:
        st.caption("The evidence of a finished defense appears here.")
except KDCoreError as e:
    show_error(e)
