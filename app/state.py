"""Shared dashboard state: the job store, the review store, the user's side of it, and the job a page is looking at.

The data directory is `$KDAUDIT_HOME` (default ./kdaudit-data), the same one the workers use.
A page's job is kept in the URL (`?job=ID`) so a page can be shared and reloaded. Pages read and act
through `access()`, the signed-in user's side of the store (`kdcore.jobs.access`): lists hold only
what the user may see, and a job named in the URL that is someone else's is refused (`refuse_ui`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st

from app.identity import current_user
from app.words import in_words
from kdcore.errors import AccessError, InputError, KDCoreError
from kdcore.jobs.access import Access
from kdcore.jobs.owners import ACCESS_REFUSED
from kdcore.jobs.review import Reviews
from kdcore.jobs.store import Job, JobStore

STATE_ICON = {"queued": "⏳", "running": "🏃", "succeeded": "✅", "failed": "❌", "cancelled": "🚫", "interrupted": "⚠️"}


@st.cache_resource
def store() -> JobStore:
    return JobStore()


@st.cache_resource
def reviews() -> Reviews:
    return Reviews(store())


def access() -> Access:
    """The signed-in user's side of the job store (`app.identity.current_user`)."""
    return Access(store(), current_user())


def refuse_ui(job_id: int, what: str = "opened", stop: bool = True) -> None:
    """When job `job_id` (named in the URL) is someone else's: say so, in words that tell nothing of
    it, note the refusal in the trail, and stop the page (unless not `stop`). A job that does not
    exist is left to the caller."""
    try:
        job = store().get(job_id)
    except InputError:
        return
    acting = access()
    if acting.may(job):
        return
    noted = st.session_state.setdefault("_refused", set())  # a page reruns on every click: noted once
    if (job_id, what) not in noted:
        noted.add((job_id, what))
        try:
            acting.open(job_id, action=what, record=False)  # refused, and so written to the trail
        except AccessError:
            pass
    st.error(ACCESS_REFUSED, icon="🔒")
    if stop:
        st.stop()


def note_opened(job: Job) -> None:
    """Write "opened" to the trail once per session and job (a page reruns on every click)."""
    seen = st.session_state.setdefault("_opened", set())
    if job.id not in seen:
        access().open(job.id)
        seen.add(job.id)


def downloaded(job: Job, what: str, data: Callable[[], bytes | str] | bytes | str) -> Callable[[], bytes | str]:
    """A download button's data that writes "downloaded" to the trail when the user clicks it (and is
    refused if the job stopped being theirs to read). Runs on click, outside the page's script."""
    acting = access()

    def fetch() -> bytes | str:
        acting.downloaded(job.id, what)
        return data() if callable(data) else data

    return fetch


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
    """Select one of the jobs the user may see; the choice lives in the URL (`?job=ID`), and is noted
    in the trail. Returns None when there is none; stops the page on another user's job."""
    jobs = [j for j in access().jobs() if j.kind in kinds and (j.state == "succeeded" or not finished_only)]
    ids = [j.id for j in jobs]
    wanted = st.query_params.get("job")
    if wanted and wanted.isdigit() and int(wanted) not in ids:
        refuse_ui(int(wanted))
    if not jobs:
        st.info("No finished audits yet. Run the demo from **Home** or start one under **New audit**.")
        return None
    index = ids.index(int(wanted)) if wanted and wanted.isdigit() and int(wanted) in ids else 0
    if wanted and (not wanted.isdigit() or int(wanted) not in ids):
        st.warning(f"Job {wanted} is not a finished {'/'.join(kinds)} job; showing #{ids[index]} instead.")
    job = st.selectbox(label, jobs, index=index, format_func=job_title)
    st.query_params["job"] = str(job.id)
    note_opened(job)
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
