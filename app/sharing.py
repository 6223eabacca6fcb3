"""The Jobs page's team sections: who you are and your quotas, sharing your audits, and (admins) the access trail.

Acts go through `app.state.access()` (`kdcore.jobs.access`), which checks the role and writes the trail.
"""

from __future__ import annotations

import streamlit as st

from app.identity import current_user
from app.state import access, fmt_time, job_title, show_error
from kdcore.errors import KDCoreError
from kdcore.jobs import trail as trails
from kdcore.jobs.owners import SHARE_ROLES
from kdcore.jobs.quotas import size_in_words

ROLE_WORDS = {"read": "read (open, download)", "review": "review (also judge its poison candidates)"}


def whoami_ui() -> None:
    """Who the page acts as, and how much of their quotas they use."""
    me, acting = current_user(), access()
    if not me.subject:
        st.info("Sign in to see your audits.", icon="🔑")
        return
    use, limits = acting.usage(), acting.limits
    who = (
        "Single-user mode: every audit here is yours"
        if me.subject == "local"
        else f"Signed in as **{me.name}** (user `{me.subject}`; share with a colleague by this name)"
    )
    st.caption(
        f"{who}{' · admin: you see every user’s jobs' if me.is_admin and me.subject != 'local' else ''}  \n"
        f"Your quotas: {use['jobs']} of {limits.quota_jobs} jobs queued or running · "
        f"{size_in_words(use['upload_bytes'])} of {size_in_words(limits.quota_upload_bytes)} of uploads kept"
    )


def sharing_ui() -> None:
    """Share one of your audits with named users (read or review), and take a share back."""
    me, acting = current_user(), access()
    mine = [j for j in acting.jobs() if j.group_id is None and (me.is_admin or j.owner == me.subject)]
    with st.expander("Share an audit", key="sharing"):
        if not mine:
            st.caption("You have no audits to share yet.")
            return
        job = st.selectbox("Audit", mine, format_func=job_title, key="share_job")
        cols = st.columns([2, 2, 1], vertical_alignment="bottom")
        who = cols[0].text_input("With user", key="share_with", placeholder="their user name, from their Jobs page")
        role = cols[1].selectbox("They may", SHARE_ROLES, format_func=ROLE_WORDS.get, key="share_role")
        if cols[2].button("Share", key="share_button"):
            try:
                acting.share(job.id, who, role)
                st.toast(f"Job #{job.id} shared with {who.strip()} ({role}).")
            except KDCoreError as e:
                show_error(e)
        shares = acting.shares(job.id)
        if not shares:
            st.caption("Not shared with anyone: only you (and admins) see it.")
        for s in shares:
            row = st.columns([4, 1], vertical_alignment="center")
            row[0].write(f"👤 {s.subject} — {s.role}, since {fmt_time(s.granted_at)}")
            if row[1].button("Remove", key=f"unshare-{job.id}-{s.subject}"):
                acting.unshare(job.id, s.subject)
                st.rerun()


def trail_ui() -> None:
    """Admins: the access trail, newest first, with a CSV export."""
    if not current_user().is_admin:
        return
    entries = access().trail()
    with st.expander(f"Access trail ({len(entries):,} entries, admins only)", key="trail"):
        if not entries:
            st.caption("Nobody has opened, downloaded, shared, reviewed, cancelled or retried anything yet.")
            return
        rows = [
            {"when": fmt_time(e.at), "user": e.subject, "action": e.action, "job": e.job_id, "detail": e.detail}
            for e in entries[:1000]
        ]
        st.dataframe(rows, hide_index=True)
        st.download_button(
            "Download the trail (CSV)",
            data=lambda: trails.to_csv(entries),
            file_name="access-trail.csv",
            mime="text/csv",
            key="trail_csv",
            on_click="ignore",
        )
