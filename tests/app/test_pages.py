"""AppTest smoke tests: Home, Jobs, New audit render against a real data directory."""

from __future__ import annotations

import io
import zipfile

from kdcore.jobs.store import JobStore
from tests.app.conftest import open_page


def test_home_lists_audits_and_demo_button_queues_a_job(kdaudit_home):
    at = open_page("home")
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "digits audit" in text and "tiny sweep" in text
    before = len(JobStore(kdaudit_home).list())
    at.button(key="demo_quick").click().run(timeout=30)
    jobs = JobStore(kdaudit_home).list()
    assert len(jobs) == before + 1 and jobs[0].kind == "demo" and jobs[0].config["quick"] is True
    assert jobs[0].config["blind"] is True  # the demo is judged as a user's audit without a trigger would be
    store = JobStore(kdaudit_home)
    store.cancel(jobs[0].id)  # keep the fixture's store free of queued work


def test_jobs_page_shows_progress_log_and_retry(kdaudit_home):
    store = JobStore(kdaudit_home)
    j = store.submit("audit", store.get(1).config, label="to cancel")
    store.cancel(j.id)
    at = open_page("jobs")
    assert not at.exception
    assert any("digits audit" in m.value for m in at.markdown)
    retry = at.button(key=f"retry-{j.id}")
    retry.click().run(timeout=30)
    newest = store.list()[0]
    assert newest.parent_id == j.id and newest.state == "queued"
    store.cancel(newest.id)
    assert any("stage" in c.value for c in at.code)  # the finished audit's log tail


def test_new_audit_page_renders_and_waits_for_uploads(kdaudit_home):
    at = open_page("new_audit")
    assert not at.exception
    assert at.button(key="submit_audit").disabled


def test_save_image_set_zips_loose_images_and_keeps_single_zip(kdaudit_home):
    import streamlit as st

    from app.uploads import safe_name, save_image_set

    class Up:
        def __init__(self, name, data):
            self.name, self._d = name, data

        def getvalue(self):
            return self._d

    st.cache_resource.clear()
    p = save_image_set([Up("a.png", b"1"), Up("../../evil/b.png", b"2"), Up("dir/a.png", b"3")])
    with zipfile.ZipFile(p) as z:
        assert sorted(z.namelist()) == ["_a.png", "a.png", "b.png"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x/1.png", b"")
    single = save_image_set([Up("set.zip", buf.getvalue())])
    assert single.name == "set.zip" and single.read_bytes() == buf.getvalue()
    assert safe_name("../../etc/passwd") == "passwd" and safe_name("..") == "upload"
