"""The review queue: poison-data candidates of a finished run, ranked by suspicion, judged by hand.

Rows come from the run's `candidates.csv` (`kdcore.candidates`: flagged first, then by descending
suspicion score); images come from the run's training set. Both are read, cached and filtered in
`app.review_queue`; this module draws them. Verdicts go to `kdcore.jobs.review.Reviews` (current
verdict + append-only audit trail) and flow into a `refine` job (fine-tune again with the verdicts).

Widget keys are stable so a browser test can drive the page: see `KEYS` below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import streamlit as st

from app.results import scaled_metric_ui
from app.review_queue import (
    PAGE_SIZE,
    VERDICT_FILTERS,
    Filters,
    ground_truth_summary,
    page_count,
    review_counts,
    thumbnail,
)
from app.state import access, downloaded, fmt_time, reviews
from app.svg import Bars, Mark, histogram_svg
from kdcore.candidates import Candidate
from kdcore.data.imageset import ImageSet
from kdcore.errors import KDCoreError
from kdcore.jobs.review import VERDICTS, Verdict
from kdcore.jobs.store import Job

GRID_COLUMNS = 4  # a card's poison / clean / unsure buttons fit in one row from 1280 px (six columns stacked them)
# The verdict buttons of a card, a little tighter than Streamlit's (16 px padding, 14 px type): ~142 px
# for the three, where a card at 1280 px (sidebar open) holds 161.
CARD_CSS = """<style>
[class*="st-key-card-"] [data-testid="stButtonGroup"] button { padding-left: .35rem; padding-right: .35rem; }
[class*="st-key-card-"] [data-testid="stButtonGroup"] button p { font-size: .8rem; }
</style>"""
HIST_BINS = 50
VERDICT_ICON = {"poison": "☠️", "clean": "✅", "unsure": "❔"}
REFINE_LABEL = "Fine-tune again with my verdicts"
# Stable widget keys (Streamlit also renders them as the CSS class `st-key-<key>`).
KEYS = {
    "reviewer": "reviewer-input",
    "classes": "filter-classes",
    "predicted": "filter-predicted",
    "score": "filter-score",
    "flagged": "filter-flagged",
    "verdict": "filter-verdict",
    "page": "cand-page",
    "refine": "refine",
    "export": "export-verdicts",
    "truth": "show-truth",
}


# ---------------------------------------------------------------- widgets


def _reviewer() -> str:
    return st.session_state.get("reviewer", "")


def _keep_reviewer() -> None:
    # The widget's own state is dropped when the user visits another page; this copy is not.
    st.session_state["reviewer"] = st.session_state[KEYS["reviewer"]].strip()


def reviewer_ui() -> str:
    """Sidebar name field; the name is written into every verdict's audit trail."""
    st.sidebar.text_input(
        "Reviewer",
        value=_reviewer(),
        key=KEYS["reviewer"],
        on_change=_keep_reviewer,
        placeholder="your name",
        help="Recorded with every verdict you set, in the audit trail.",
    )
    return _reviewer()


def _first_page() -> None:
    st.session_state[KEYS["page"]] = 1


def score_bounds(rows: Sequence[Candidate]) -> tuple[float, float]:
    """The score slider's range: the scores' min and max, widened to the slider's 0.01 steps."""
    if not rows:
        return -1.0, 1.0
    lo, hi = min(r.score for r in rows), max(r.score for r in rows)
    lo, hi = math.floor(lo * 100) / 100, math.ceil(hi * 100) / 100
    return (lo, hi) if hi > lo else (lo, lo + 0.01)


def candidate_filters_ui(rows: Sequence[Candidate], names: Mapping[int, str]) -> Filters:
    """Two rows of filters (wide enough that no label is cut): classes, predictions and the lowest
    score shown; then the flagged toggle and the verdict filter."""
    ids = list(names)
    fmt = lambda c: f"{c} · {names[c]}" if names[c] != str(c) else str(c)
    lo, hi = score_bounds(rows)
    if not lo <= st.session_state.get(KEYS["score"], lo) <= hi:  # another run's value
        del st.session_state[KEYS["score"]]
    cols = st.columns(3)
    classes = cols[0].multiselect(
        "Label", ids, format_func=fmt, key=KEYS["classes"], on_change=_first_page, placeholder="all classes"
    )
    predicted = cols[1].multiselect(
        "Teacher predicts", ids, format_func=fmt, key=KEYS["predicted"], on_change=_first_page, placeholder="any"
    )
    min_score = cols[2].slider(
        "Show only score ≥",
        lo,
        hi,
        lo,
        step=0.01,
        key=KEYS["score"],
        on_change=_first_page,
        help="p_teacher(ŷ) − p_student(ŷ) for the teacher's class ŷ: near 1 = the teacher is sure, the student not. "
        "The histogram below shows where the scores fall.",
    )
    cols = st.columns([1, 3], vertical_alignment="bottom")
    flagged = cols[0].toggle(
        "Flagged only",
        value=True,
        key=KEYS["flagged"],
        on_change=_first_page,
        help="Only samples where teacher and student disagree (the poison-data candidates).",
    )
    verdict = cols[1].radio(
        "Verdict filter", VERDICT_FILTERS, horizontal=True, key=KEYS["verdict"], on_change=_first_page
    )
    return Filters(tuple(classes), tuple(predicted), (float(min_score), hi), bool(flagged), str(verdict))


def flagged_cut(rows: Sequence[Candidate]) -> tuple[float, bool] | None:
    """(the lowest flagged score, whether it is a clean cut: every flagged sample scores at least it and
    every other below it). None when nothing is flagged. KD disagreement flags by teacher ≠ student,
    not by score, so its flags are usually not a clean cut; a detector's top-k flags are."""
    flagged = [r.score for r in rows if r.flagged]
    if not flagged:
        return None
    cut = min(flagged)
    return cut, all(r.score < cut for r in rows if not r.flagged)


def score_histogram_svg(rows: Sequence[Candidate], min_score: float | None = None) -> str:
    """Histogram of every sample's score (SVG, `app.svg`), flagged and not flagged stacked in two
    colours, with the flagged cut (dashed) and the "show only score ≥" value (solid, when it hides
    anything) marked. Binned here (HIST_BINS bars) so a 50k-sample table sends 100 numbers, not 50k."""
    scores = np.array([r.score for r in rows], dtype=float)
    flags = np.array([r.flagged for r in rows], dtype=bool)
    lo, hi = score_bounds(rows)
    edges = np.linspace(lo, hi, HIST_BINS + 1)
    series = [
        Bars(name, np.histogram(scores[keep], bins=edges)[0].tolist(), colour)
        for name, keep, colour in (("not flagged", ~flags, "#9aa5b8"), ("flagged", flags, "#d6404e"))
    ]
    marks = []
    cut = flagged_cut(rows)
    if cut is not None:
        at, clean = cut
        marks.append(Mark(at, f"flagged cut {at:.2f}" if clean else f"lowest flagged {at:.2f}", "#d6404e", True))
    if min_score is not None and min_score > lo:
        marks.append(Mark(min_score, f"showing ≥ {min_score:.2f}", "#1f2430"))
    return histogram_svg(edges, series, marks=marks, x_title="suspicion score", unit="samples", height=190)


def score_histogram_ui(rows: Sequence[Candidate], min_score: float) -> None:
    """Where the scores fall off, above the gallery."""
    with st.container(key="score-histogram"):
        st.markdown(score_histogram_svg(rows, min_score), unsafe_allow_html=True)


def counts_ui(rows: Sequence[Candidate], shown: int, verdicts: Mapping[int, str]) -> None:
    """Flagged with its scale ("2,141 of 10,000 (21 %)"), shown, reviewed and per-verdict counts."""
    c = review_counts(rows, verdicts)
    cols = st.columns(6)
    scaled_metric_ui(cols[0], "Flagged", c["flagged"], len(rows), help="training samples, of all in the run's set")
    cols[1].metric("Shown", f"{shown:,}", help="after the filters above")
    cols[2].metric("Reviewed", f"{c['reviewed']:,}")
    for col, v in zip(cols[3:], VERDICTS, strict=True):
        col.metric(f"{VERDICT_ICON[v]} {v.capitalize()}", f"{c[v]:,}")


def pager_ui(n: int) -> int:
    """Page number input; returns the 0-based offset of the page's first row."""
    pages = page_count(n)
    key = KEYS["page"]
    if not 1 <= st.session_state.get(key, 1) <= pages:  # filters shrank the list under the user
        st.session_state[key] = 1
    page = st.number_input("Page", min_value=1, max_value=pages, step=1, key=key, help=f"{pages} pages of {PAGE_SIZE}")
    return (int(page) - 1) * PAGE_SIZE


def _review(job_id: int, samples: list[int], verdict: str | None, note: str = "") -> int:
    """Set verdicts as the signed-in user (who needs the review role: `Access.review`); 0 when refused."""
    try:
        return access().review(job_id, samples, verdict, reviewer=_reviewer(), note=note)
    except KDCoreError as e:  # a share taken back while the page was open
        st.toast(str(e), icon="🔒")
        return 0


def _bulk(job_id: int, samples: list[int], verdict: str | None) -> None:
    n = _review(job_id, samples, verdict, note="bulk: page")
    what = f"as {verdict}" if verdict else "cleared"
    st.toast(f"{n} verdict{'s' * (n != 1)} {what}.")


def bulk_actions_ui(job: Job, page_rows: Sequence[Candidate], can_review: bool = True) -> None:
    """Buttons that set (or clear) the verdict of every sample on the current page (disabled for a
    user who may only read the audit)."""
    samples = [r.index for r in page_rows]
    st.caption(f"Bulk actions on the {len(samples)} samples on this page:")
    cols = st.columns(4)
    for col, v in zip(cols[:3], VERDICTS, strict=True):
        col.button(
            f"All {v}",  # short: four buttons share the width beside the pager
            key=f"bulk-{v}",
            on_click=_bulk,
            args=(job.id, samples, v),
            disabled=not samples or not can_review,
            help=f"Mark every sample on this page {v}.",
            width="stretch",
        )
    cols[3].button(
        "Clear all",
        key="bulk-clear",
        on_click=_bulk,
        args=(job.id, samples, None),
        disabled=not samples or not can_review,
        help="Clear the verdict of every sample on this page.",
        width="stretch",
    )


def _on_verdict(job_id: int, sample: int) -> None:
    _review(job_id, [sample], st.session_state[f"verdict-{sample}"])


def _card(
    job: Job,
    r: Candidate,
    images: ImageSet,
    names: Mapping[int, str],
    v: Verdict | None,
    truth: bool,
    can_review: bool = True,
) -> None:
    with st.container(border=True, key=f"card-{r.index}"):
        if r.index < len(images):
            st.image(thumbnail(images.images[r.index]), caption=r.name)
        else:
            st.warning(f"Sample {r.index} is not in the training set ({len(images)} images).")
        flag = " 🚩" if r.flagged else ""
        st.markdown(f"**#{r.rank}**{flag} · score **{r.score:.3f}**")
        st.caption(
            f"label **{names.get(r.label, r.label)}**  \n"
            f"teacher {names.get(r.teacher_pred, r.teacher_pred)} → student {names.get(r.student_pred, r.student_pred)}"
        )
        key = f"verdict-{r.index}"
        # The store is the truth: sync the widget to it each run (another reviewer or a bulk action
        # may have changed it). Set before the widget is created, so no default is passed.
        st.session_state[key] = v.verdict if v else None
        st.segmented_control(
            "Verdict",
            VERDICTS,
            key=key,
            on_change=_on_verdict,
            args=(job.id, r.index),
            label_visibility="collapsed",
            disabled=not can_review,
        )
        if v:
            who = f" by {v.reviewer}" if v.reviewer else ""
            st.caption(f"{VERDICT_ICON[v.verdict]} {v.verdict}{who}, {fmt_time(v.decided_at)}")
        else:
            st.caption("not reviewed")
        if truth and r.is_poison is not None:
            st.caption("☠️ true poison" if r.is_poison else "true clean")


def gallery_ui(
    job: Job,
    rows_page: Sequence[Candidate],
    images: ImageSet,
    verdicts: Mapping[int, Verdict],
    names: Mapping[int, str] | None = None,
    show_truth: bool = False,
    can_review: bool = True,
) -> None:
    """A grid of sample cards (image, rank, name, label, predictions, score, verdict control)."""
    names = names or {}
    if not rows_page:
        st.info("No candidates match these filters.")
        return
    st.html(CARD_CSS)
    for start in range(0, len(rows_page), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for col, r in zip(cols, rows_page[start : start + GRID_COLUMNS], strict=False):
            with col:
                _card(job, r, images, names, verdicts.get(r.index), show_truth, can_review)


def review_actions_ui(job: Job, n_verdicts: int, can_review: bool = True) -> bool:
    """Export and refine buttons (half the width each, so their labels fit at 1280 px); returns True
    when the reviewer asked to fine-tune again."""
    cols = st.columns(2)
    cols[1].download_button(
        "Export verdicts (CSV)",
        data=downloaded(job, "verdicts CSV", lambda: reviews().to_csv(job.run_dir)),
        file_name=f"verdicts-job-{job.id}.csv",
        mime="text/csv",
        key=KEYS["export"],
        on_click="ignore",
        width="stretch",
    )
    return cols[0].button(
        REFINE_LABEL,
        key=KEYS["refine"],
        type="primary",
        disabled=n_verdicts == 0 or not can_review,
        help=(
            "Queue a job that fine-tunes this run's student again: flagged samples are removed, except those "
            "you marked clean; samples you marked poison are removed too; unsure changes nothing."
            if n_verdicts
            else "Set at least one verdict first."
        ),
        width="stretch",
    )


def history_ui(job: Job, limit: int = 1000) -> None:
    """The audit trail: every verdict change on this run, newest first."""
    log = reviews().history(job.run_dir)
    with st.expander(f"Verdict history ({len(log)} change{'s' * (len(log) != 1)})", key="history"):
        if not log:
            st.caption("No verdicts yet.")
            return
        table = [
            {
                "when": fmt_time(h["decided_at"]),
                "sample": h["sample"],
                "verdict": h["verdict"] or "(cleared)",
                "previous": h["previous"] or "",
                "reviewer": h["reviewer"],
                "note": h["note"],
            }
            for h in reversed(log[-limit:])
        ]
        st.dataframe(table, hide_index=True, width="stretch")


def ground_truth_ui(rows: Sequence[Candidate], verdicts: Mapping[int, str]) -> bool:
    """Demo-only hint (the true poisons are known for built-in data). Returns whether to mark cards."""
    s = ground_truth_summary(rows, verdicts)
    if s is None:
        return False
    with st.expander("Ground truth (demo only)", key="ground-truth"):
        st.caption(
            "This built-in demo knows which samples were poisoned; a real audit never does. "
            "Use it to check the method and your verdicts, not to make them."
        )
        st.write(
            f"{s['flagged_poisons']} of {s['poisons']} poisons are flagged. "
            f"Your poison verdicts: {s['poison_verdicts_right']} of {s['poison_verdicts']} right; "
            f"clean verdicts on true poisons: {s['clean_verdicts_on_poison']} of {s['clean_verdicts']}."
        )
        return st.toggle("Mark true poisons on the cards", value=False, key=KEYS["truth"])
