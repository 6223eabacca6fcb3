"""Results: the verdict, metrics, detoxification, confusion matrices and downloads of a run; curves of a sweep."""

import streamlit as st

from app.charts import SCENARIO_LABELS, class_names_of, sweep_accuracy_figure, sweep_detox_figure
from app.results import (
    confusion_grid_ui,
    detox_summary_ui,
    downloads_ui,
    link_ui,
    load_report,
    metric_cards_ui,
    refine_view,
    review_summary_ui,
)
from app.state import fmt_duration, fmt_time, job_picker_ui, job_title, show_error
from app.verdict import flip_matrix_ui, verdict_card_ui
from app.words import note_in_words, report_trigger
from kdcore.errors import KDCoreError

st.title("📊 Results")
job = job_picker_ui(kinds=("demo", "audit", "refine", "sweep"))
if job is None:
    st.stop()


def show_sweep(report: dict) -> None:
    cfg = report.get("config") or {}
    st.caption(
        f"Budgets {', '.join(f'{b:,}' for b in cfg.get('budgets', []))} clean images · seeds "
        f"{', '.join(str(s) for s in cfg.get('seeds', []))} · {report.get('device', '?')} · "
        f"{fmt_duration(report.get('wall_s'))}"
    )
    st.subheader("Table 5 layout")
    st.markdown(report.get("table") or "_(no table)_")
    rows = report.get("rows") or []
    scenarios = [s for s in ("attack", "no_attack") if any(r.get("scenario") == s for r in rows)]
    if not scenarios:
        st.warning("The sweep has no finished cells to draw.")
        return
    st.subheader("Accuracy vs number of clean images")
    for col, s in zip(st.columns(len(scenarios)), scenarios, strict=True):
        col.plotly_chart(sweep_accuracy_figure(rows, s), width="stretch", key=f"acc-{s}")
    st.subheader("False positives and precision vs number of clean images")
    for col, s in zip(st.columns(len(scenarios)), scenarios, strict=True):
        col.plotly_chart(sweep_detox_figure(rows, s), width="stretch", key=f"detox-{s}")
    st.caption(
        "Points are means over seeds, with error bars of ± one standard deviation when there are several. "
        f"Scenarios: {', '.join(SCENARIO_LABELS[s] for s in scenarios)}."
    )


def show_run(report: dict) -> None:
    trigger = report_trigger(report, class_names_of(report))
    verdict_card_ui(report, class_names_of(report), lambda page, label: link_ui(page, label, job.id))
    st.caption(
        f"Finished {fmt_time(job.finished_at)} · {report.get('device', '?')} · {fmt_duration(report.get('wall_s'))}"
        + (f" · trigger: {trigger}" if trigger else "")
    )
    st.subheader("Accuracy and attack success rate")
    metric_cards_ui(report)
    st.subheader("Detoxification")
    detox_summary_ui(report.get("detox"))
    if report.get("detox"):
        link_ui("app_pages/candidates.py", "🔎 Review the poison candidates", job.id)
    flip_matrix_ui(report)
    if job.kind == "refine":
        st.subheader("What the review changed")
        review_summary_ui(report.get("review"))
    for note in report.get("notes") or []:
        st.info(note_in_words(note), icon="ℹ️")
    st.subheader("Confusion matrices")
    st.caption("Rows: true class; columns: predicted class; colour: share of the row; text: counts.")
    confusion_grid_ui(report, class_names_of(report))
    link_ui("app_pages/explain.py", "🔥 Explain: Grad-CAM and activation norms", job.id)


try:
    raw = load_report(job.run_dir)
    if raw is None:
        st.warning(f"Job #{job.id} finished without a report: its log on the Jobs page says why.")
        st.stop()
    st.subheader(job_title(job))
    if job.kind == "sweep":
        show_sweep(raw)
        view = raw
    else:
        view = raw
        if job.kind == "refine":
            source = load_report(raw.get("source_run", ""))
            view = refine_view(raw, source)
            if job.parent_id is not None:
                link_ui("app_pages/results.py", f"← Source audit #{job.parent_id}", job.parent_id)
            if source is None:
                st.warning("The source run's report is missing: only the re-fine-tuned model is shown.")
        show_run(view)
    st.subheader("Downloads")
    downloads_ui(job, view)
except KDCoreError as e:
    show_error(e)
