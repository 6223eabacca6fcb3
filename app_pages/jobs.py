"""Jobs: live progress of every job the user may see, where it runs (device; under Ray, the node, and the
cluster's free resources on top), a fan-out's parts, its log, cancel, retry (same inputs) and, for an
audit, reopen in the New-audit form (its inputs filled in, to change) — those three for its owner or an
admin. Refreshed by a fragment. Below: sharing one's audits, and for admins the access trail."""

import streamlit as st

from app.identity import current_user
from app.jobs_client import log_tail
from app.placement import cluster_line, cluster_status, fan_outs, node_lines, placement_line
from app.sharing import sharing_ui, trail_ui, whoami_ui
from app.state import STATE_ICON, access, fmt_duration, job_title, note_opened, refuse_ui, show_error, store
from app.words import in_words, reason_in_words
from kdcore.errors import KDCoreError

st.title("Jobs")
st.caption("Jobs run in worker processes; closing the browser does not stop them.")
whoami_ui()
wanted = st.query_params.get("job", "")
if wanted.isdigit():
    refuse_ui(int(wanted), stop=False)  # another user's job: said so; the list below holds only the user's


@st.fragment(run_every=2.0)
def job_list() -> None:
    cluster = cluster_status(store().data_dir)
    if cluster is not None:
        with st.container(border=True, key="ray-cluster"):
            st.markdown(f"**{cluster_line(cluster)}**")
            st.caption("  \n".join(f"🌐 {line}" for line in node_lines(cluster)))
    me = current_user()
    jobs = access().jobs()
    parts = fan_outs(jobs)
    if not jobs:
        st.info("No jobs yet.")
        return
    for j in jobs[:100]:
        with st.container(border=True):
            top = st.columns([3, 1.2, 1.2, 1.2])
            top[0].markdown(f"**{job_title(j)}**" + ("" if j.owner == me.subject else f"  \n👤 {j.owner}"))
            manage = me.is_admin or j.owner == me.subject
            top[1].write(f"⏱ {fmt_duration(j.elapsed())}")
            top[2].write(f"🖥 {j.device or '—'}")
            if where := placement_line(j, parts.get(j.id)):
                st.caption(where)
            if j.state == "running":
                eta = store().eta(j)
                top[3].write(f"ETA {fmt_duration(eta)}" if eta is not None else "")
                frac = j.step / j.total if j.total else 0.0
                st.progress(min(max(frac, 0.0), 1.0), text=f"{j.stage}: {j.step}/{j.total}  {j.message}")
                if j.cancel_requested:
                    st.caption("Cancel requested — stopping within seconds.")
            elif j.error:
                st.caption(f"Reason: {reason_in_words(j.error)[:400]}")
            act = st.columns([1, 1, 2, 2])
            if manage and j.state in ("queued", "running") and not j.cancel_requested:
                if act[0].button("Cancel", key=f"cancel-{j.id}"):
                    try:
                        access().cancel(j.id)
                    except KDCoreError as e:
                        show_error(e)
                    st.rerun()
            if manage and j.state in ("failed", "cancelled", "interrupted"):
                if act[0].button("Retry", key=f"retry-{j.id}"):
                    try:
                        new = access().retry(j.id)
                        st.toast(f"Queued job #{new.id} (retry of #{j.id}); finished stages are reused.")
                    except KDCoreError as e:
                        show_error(e)
                    st.rerun()
            if manage and j.kind == "audit" and j.terminal:
                act[2].page_link("app_pages/new_audit.py", label="Reopen in the form", query_params={"from": str(j.id)})
            if j.state == "succeeded":
                page, label = {"defend": ("defenses", "Defenses →"), "audit_many": ("models", "Models →")}.get(
                    j.kind, ("results", "Results →")
                )
                act[1].page_link(f"app_pages/{page}.py", label=label, query_params={"job": str(j.id)})
            if str(j.id) == wanted:
                note_opened(j)
            with st.expander("Log", expanded=(str(j.id) == wanted and j.state != "succeeded")):
                st.code(in_words(log_tail(j)) or "(no log yet)", language=None)
    st.caption(
        f"{sum(j.state == 'running' for j in jobs)} running · {sum(j.state == 'queued' for j in jobs)} "
        f"queued · {STATE_ICON['succeeded']} {sum(j.state == 'succeeded' for j in jobs)} done"
    )


job_list()
sharing_ui()
trail_ui()
