"""Shared dashboard state: the job store, the review store, and the job a page is looking at.

The data directory is `$KDAUDIT_HOME` (default ./kdaudit-data), the same one the workers use.
A page's job is kept in the URL (`?job=ID`) so a page can be shared and reloaded.
"""

from __future__ import annotations

import time

import streamlit as st

from app.words import in_words
from kdcore.errors import KDCoreError
from kdcore.jobs.review import Reviews
from kdcore.jobs.store import Job, JobStore

STATE_ICON = {"queued": "⏳", "running": "🏃", "succeeded": "✅", "failed": "❌", "cancelled": "🚫", "interrupted": "⚠️"}


@st.cache_resource
def store() -> JobStore:
    return JobStore()


@st.cache_resource
def reviews() -> Reviews:
    return Reviews(store())


def job_title(j: Job) -> str:
    label = f" — {j.label}" if j.label else ""
    return f"#{j.id} {j.kind}{label} ({STATE_ICON.get(j.state, '')} {j.state})"


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "—"
    s = int(s)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "—"


def job_picker_ui(
    kinds: tuple[str, ...] = ("demo", "audit", "sweep", "refine"), finished_only: bool = True, label: str = "Audit"
) -> Job | None:
    """Select a job; the choice lives in the URL (`?job=ID`). Returns None when there is none."""
    jobs = [j for j in store().list() if j.kind in kinds and (j.state == "succeeded" or not finished_only)]
    if not jobs:
        st.info("No finished audits yet. Run the demo from **Home** or start one under **New audit**.")
        return None
    ids = [j.id for j in jobs]
    wanted = st.query_params.get("job")
    index = ids.index(int(wanted)) if wanted and wanted.isdigit() and int(wanted) in ids else 0
    if wanted and (not wanted.isdigit() or int(wanted) not in ids):
        st.warning(f"Job {wanted} is not a finished {'/'.join(kinds)} job; showing #{ids[index]} instead.")
    job = st.selectbox(label, jobs, index=index, format_func=job_title)
    st.query_params["job"] = str(job.id)
    return job


# An error's `details` lists shown in full behind an expander (kdcore.models.fit.check_fits), with their titles
DETAIL_LISTS = {
    "unknown_layers": "Layers in the file that the architecture does not know",
    "missing_layers": "Layers of the architecture missing from the file",
    "unexpected": "Tensors in the file that the architecture does not have",
    "missing": "Tensors the architecture expects that the file lacks",
    "wrong_shapes": "Tensors with the wrong shape",
}


def show_error(e: KDCoreError) -> str:
    """A KDCoreError in the user's words (`app.words`): fields of the page, not CLI flags. The lists
    behind a summarised message (e.g. every tensor a model file lacks) go in an expander. Returns the
    line shown (a form section's problem, `app.section`)."""
    line = in_words(" ".join(str(e).split()))
    st.error(line, icon="🚫")
    lists = {title: e.details[key] for key, title in DETAIL_LISTS.items() if e.details.get(key)}
    if lists:
        with st.expander("The full lists"):
            for title, items in lists.items():
                st.markdown(f"**{title}** ({len(items)})")
                st.code("\n".join(items), language=None)
    return line
