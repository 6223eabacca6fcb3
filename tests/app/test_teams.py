"""Teams on one server, in the real dashboard (AppTest): each user set as Streamlit's own signed-in user
(`AppTest.user`, what `st.user` reads), the jobs in a real store with a real finished digits audit.

Alice owns an audit; Bob may neither list, open (also by `?job=`), download, review, cancel, retry nor
reopen it, and is told so without a word of what it holds; once Alice shares it, Bob reads it and the
admin's access trail shows both; an admin sees everyone's jobs. Quotas refuse the next job or upload
of one user, with nothing queued or stored, and leave another user alone."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kdcore import limits
from kdcore.jobs.access import Access
from kdcore.jobs.owners import ACCESS_REFUSED, LOCAL_USER
from kdcore.jobs.store import JobStore
from kdcore.limits import Limits
from tests.app.conftest import _copy_jobs_db

ROOT = Path(__file__).resolve().parents[2]
ALICE = {"is_logged_in": True, "sub": "alice-sub", "name": "Alice", "email": "alice@example.org"}
BOB = {"is_logged_in": True, "sub": "bob-sub", "name": "Bob"}
ROOT_USER = {"is_logged_in": True, "sub": "root-sub", "name": "Root"}
SECRET = "alice-secret-audit"


@pytest.fixture()
def team(app_home, tmp_path, monkeypatch):
    """A private copy of app_home's jobs (the local user's) plus Alice's finished audit (job `alice`, on
    the digits audit's run) and a failed one of hers (`failed`); root-sub is the admin."""
    _copy_jobs_db(app_home, tmp_path)
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path))
    monkeypatch.setenv("KDAUDIT_ADMINS", "root-sub")
    monkeypatch.setattr(limits, "_current", Limits())
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    store = JobStore(tmp_path)
    source = store.get(1)
    ids = {}
    for name, state in (("alice", "succeeded"), ("failed", "failed")):
        job = store.submit("audit", source.config, label=SECRET, run_dir=source.run_dir, owner="alice-sub")
        assert store.claim("cpu", os.getpid(), job.id) is not None
        store.finish(job.id, state)
        ids[name] = job.id
    return store, ids


def open_as(user: dict, page: str, job: int | None = None, key: str = "job") -> AppTest:
    """`app_pages/<page>.py` inside the real entry point, as `user` (Streamlit's st.user), with `?<key>=job`."""
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.user = dict(user)
    at.run()
    at.switch_page(f"app_pages/{page}.py")
    if job is not None:
        at.query_params[key] = str(job)
    return at.run()


def everything_shown(at: AppTest) -> str:
    """Every text the page shows (markdown, captions, alerts, widget labels and options)."""
    parts = [
        str(getattr(el, "value", ""))
        for kind in ("markdown", "caption", "error", "info", "warning", "title")
        for el in at.get(kind)
    ]
    parts += [getattr(el.proto, "label", "") for el in at.get("selectbox")]
    parts += [o for el in at.selectbox for o in el.options]
    return "\n".join(parts)


def refused(at: AppTest) -> bool:
    return any(e.value == ACCESS_REFUSED for e in at.error)


def test_another_user_cannot_list_open_download_review_cancel_retry_or_reopen_an_audit(team):
    store, ids = team
    # app_home's jobs and trail depend on which tests ran before on this worker: compare with them
    jobs_before = len(store.list())
    trail_before = {e.id for e in Access(store, LOCAL_USER).trail()}
    for page in ("home", "jobs", "results", "candidates", "explain", "defenses", "models"):
        at = open_as(BOB, page)
        assert not at.exception, page
        assert SECRET not in everything_shown(at), page  # not listed, not in a picker
    jobs = open_as(BOB, "jobs")
    keys = {b.key for b in jobs.button}
    assert not {f"cancel-{ids['alice']}", f"retry-{ids['failed']}"} & keys
    for page in ("results", "candidates", "explain", "defenses", "models", "jobs"):
        at = open_as(BOB, page, ids["alice"])
        assert not at.exception and refused(at), page
        shown = everything_shown(at)
        assert SECRET not in shown and "digits" not in shown and "audit_cnn" not in shown, page
        assert not at.get("download_button"), page  # nothing of hers to download
    reopen = open_as(BOB, "new_audit", ids["failed"], key="from")
    assert not reopen.exception and any(ACCESS_REFUSED in e.value for e in reopen.error)
    assert reopen.text_input(key="audit_label").value != SECRET  # the form did not take her settings
    assert store.get(ids["failed"]).state == "failed"  # not retried
    assert len(store.list()) == jobs_before  # nothing queued
    trail = [e for e in Access(store, LOCAL_USER).trail() if e.id not in trail_before]
    assert {(e.subject, e.action) for e in trail if e.subject != "local"} == {("bob-sub", "refused")}
    assert {e.job_id for e in trail} == {ids["alice"], ids["failed"]}


def test_after_alice_shares_bob_reads_but_cannot_review_and_the_admin_trail_shows_both(team):
    store, ids = team
    alice = open_as(ALICE, "jobs")
    assert any(SECRET in m.value for m in alice.markdown)
    alice.selectbox(key="share_job").set_value(store.get(ids["alice"]))
    alice.text_input(key="share_with").set_value("bob-sub")
    alice.selectbox(key="share_role").set_value("read")
    alice = alice.button(key="share_button").click().run()
    assert not alice.exception and any("bob-sub — read" in m.value for m in alice.markdown)

    bob = open_as(BOB, "results", ids["alice"])
    assert not bob.exception and not refused(bob)
    assert bob.get("download_button")  # his to download now
    assert any(f"#{ids['alice']}" in s.value for s in bob.subheader)
    cand = open_as(BOB, "candidates", ids["alice"])
    assert not cand.exception and not refused(cand)
    assert any("not judge its samples" in i.value for i in cand.info)
    assert cand.button(key="bulk-poison").disabled and cand.button(key="refine").disabled
    assert f"retry-{ids['failed']}" not in {b.key for b in open_as(BOB, "jobs").button}  # not shared

    admin = open_as(ROOT_USER, "jobs")
    assert not admin.exception
    table = admin.dataframe[0].value
    seen = set(zip(table["user"], table["action"], table["job"], strict=True))
    assert {("alice-sub", "shared", ids["alice"]), ("bob-sub", "opened", ids["alice"])} <= seen
    assert admin.get("download_button")[0].proto.label == "Download the trail (CSV)"
    rows = list(csv.DictReader(io.StringIO(_trail_csv(store))))
    assert {(r["user"], r["action"]) for r in rows} >= {("alice-sub", "shared"), ("bob-sub", "opened")}


def _trail_csv(store: JobStore) -> str:
    from kdcore.jobs.trail import to_csv

    return to_csv(Access(store, LOCAL_USER).trail())


def test_an_admin_sees_every_users_jobs_and_may_cancel_them(team):
    store, _ = team
    bob = open_as(BOB, "home")
    bob = bob.button(key="demo_quick").click().run()
    demo = store.list()[0]
    assert demo.owner == "bob-sub" and demo.state == "queued"
    assert SECRET not in everything_shown(open_as(BOB, "home"))
    assert "quick demo" not in everything_shown(open_as(ALICE, "home"))
    admin = open_as(ROOT_USER, "jobs")
    shown = everything_shown(admin)
    assert SECRET in shown and "quick demo" in shown and "digits audit" in shown  # and the local user's
    admin.button(key=f"cancel-{demo.id}").click().run()
    assert store.get(demo.id).state == "cancelled"


def test_a_full_job_quota_refuses_the_next_submit_and_spares_another_user(team, monkeypatch):
    store, _ = team
    monkeypatch.setattr(limits, "_current", Limits(quota_jobs=1))
    bob = open_as(BOB, "home").button(key="demo_quick").click().run()
    first = store.list()[0]
    assert first.owner == "bob-sub"
    before = [(j.id, j.state) for j in store.list()]
    bob = open_as(BOB, "home").button(key="demo_quick").click().run()
    assert not bob.exception
    assert any("1 jobs queued or running" in e.value and "nothing was queued" in e.value for e in bob.error)
    assert [(j.id, j.state) for j in store.list()] == before
    open_as(ALICE, "home").button(key="demo_quick").click().run()
    assert store.list()[0].owner == "alice-sub"


def test_a_full_upload_quota_refuses_the_upload_before_it_is_stored(team, monkeypatch):
    store, _ = team
    monkeypatch.setattr(limits, "_current", Limits(quota_upload_bytes=1000))
    big = os.urandom(1500)
    bob = open_as(BOB, "new_audit")
    bob = bob.file_uploader(key="model_file").set_value([("bob-model.pt", big, "application/octet-stream")]).run()
    assert not bob.exception
    assert any("above your quota" in e.value and "not stored" in e.value for e in bob.error)
    assert not list(store.data_dir.glob("uploads/*/bob-model.pt"))
    alice = open_as(ALICE, "new_audit")
    small = os.urandom(500)
    alice.file_uploader(key="model_file").set_value([("alice-model.pt", small, "application/octet-stream")]).run()
    assert [p.read_bytes() for p in store.data_dir.glob("uploads/*/alice-model.pt")] == [small]


def test_a_download_is_written_to_the_trail_when_clicked_not_when_the_button_is_drawn(team):
    from app.state import downloaded

    store, ids = team
    job = store.get(ids["alice"])
    before = len(Access(store, LOCAL_USER).trail())  # the session's data folder: other tests' entries too
    fetch = downloaded(job, "report.json", lambda: b"{}")  # outside a session: the local admin, as the CLI
    assert len(Access(store, LOCAL_USER).trail()) == before
    assert fetch() == b"{}" and downloaded(job, "models CSV", "a,b\n")() == "a,b\n"
    new = Access(store, LOCAL_USER).trail()[: len(Access(store, LOCAL_USER).trail()) - before]
    assert [(e.subject, e.action, e.detail) for e in reversed(new)] == [
        ("local", "downloaded", "report.json"),
        ("local", "downloaded", "models CSV"),
    ]
