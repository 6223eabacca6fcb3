"""Poison candidates: the training samples a run flagged, ranked by suspicion, for judging by hand.

Verdicts (poison / clean / unsure) are stored with who set them and when, and feed a `refine` job
that fine-tunes the student again on the training set the reviewer approved.
"""

import streamlit as st

from app import candidates as cand
from app import review_queue as queue
from app.jobs_client import submit_refine
from app.state import access, job_picker_ui, reviews, show_error
from kdcore.errors import KDCoreError

st.title("Poison candidates")
st.caption(
    "Training samples on which the suspect model (teacher) and its distilled student disagree, most "
    "suspicious first. Judge them; your verdicts decide what the next fine-tune removes."
)

reviewer = cand.reviewer_ui()
job = job_picker_ui(kinds=("demo", "audit"))
if job is None:
    st.stop()

try:
    rows = queue.load_candidates(job.run_dir)
    if rows is None:
        st.info(
            "This run has no poison candidates: candidates come from comparing teacher and student on the "
            "labelled training set, and this audit was run without one. Start a new audit with a training set "
            "under **New audit** to review its samples here."
        )
        st.stop()
    can_review = access().may(job, "review")
    if not can_review:
        st.info("You may read this audit but not judge its samples; ask its owner to share it with you for review.")
    verdicts = reviews().get(job.run_dir)
    verdict_of = {s: v.verdict for s, v in verdicts.items()}
    images = queue.train_images(job.run_dir)
    names = queue.class_names(rows, images.class_names)

    filters = cand.candidate_filters_ui(rows, names)
    shown = queue.filter_rows(
        rows,
        filters.classes,
        filters.predicted,
        filters.score_range,
        filters.only_flagged,
        filters.verdict,
        verdict_of,
    )
    cand.counts_ui(rows, len(shown), verdict_of)
    cand.score_histogram_ui(rows, filters.score_range[0])

    if cand.review_actions_ui(job, len(verdicts), can_review):
        new = submit_refine(job)
        st.switch_page("app_pages/jobs.py", query_params={"job": str(new.id)})
    if not reviewer:
        st.caption("Tip: enter your name under **Reviewer** in the sidebar so the audit trail says who decided.")
    show_truth = cand.ground_truth_ui(rows, verdict_of)

    top = st.columns([1, 4])
    with top[0]:
        start = cand.pager_ui(len(shown))
    page_rows = shown[start : start + queue.PAGE_SIZE]
    with top[1]:
        cand.bulk_actions_ui(job, page_rows, can_review)
    if shown:
        st.caption(
            f"Showing {start + 1}–{start + len(page_rows)} of {len(shown):,} "
            f"(page {start // queue.PAGE_SIZE + 1} of {queue.page_count(len(shown))})"
        )
    cand.gallery_ui(job, page_rows, images, verdicts, names, show_truth, can_review)
    cand.history_ui(job)
except KDCoreError as e:
    show_error(e)
