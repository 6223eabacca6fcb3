"""The Lesson on a server with several users (AppTest, users set as Streamlit's signed-in user as in
tests/app/test_teams.py): it teaches only with a demo the user may see. Alice owns a finished demo (the
built-in demo at its smallest) and a running one; Bob's Lesson neither uses the finished one nor shows
the running one's progress, refuses it by `?job=`, offers him his own demo instead, and a full job quota
refuses that with nothing queued."""

from __future__ import annotations

import os
import re

import pytest

from kdcore import limits
from kdcore.jobs.access import Access
from kdcore.jobs.owners import LOCAL_USER
from kdcore.jobs.store import JobStore
from kdcore.limits import Limits
from tests.app.conftest import _copy_jobs_db
from tests.app.test_teams import ALICE, BOB, everything_shown, open_as, refused
from tests.conftest import needs_fashion_mnist

SECRET = "alice-secret-demo"


def steps(at) -> list[str]:
    return [h.value for h in at.subheader if re.match(r"\d · ", h.value)]


@pytest.fixture()
def alices_demos(lesson_home, tmp_path, monkeypatch):
    """A private copy of lesson_home's jobs (job 1: the local user's demo) plus Alice's finished demo (on
    job 1's run) and a queued one of hers. Returns (store, finished id, queued id)."""
    _copy_jobs_db(lesson_home, tmp_path)
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path))
    monkeypatch.setattr(limits, "_current", Limits())
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    store = JobStore(tmp_path)
    source = store.get(1)
    done = store.submit("demo", source.config, label=SECRET, run_dir=source.run_dir, owner="alice-sub")
    assert store.claim("cpu", os.getpid(), done.id) is not None
    store.finish(done.id, "succeeded")
    queued = store.submit("demo", source.config, label=SECRET, owner="alice-sub")
    return store, done.id, queued.id


@needs_fashion_mnist
def test_bobs_lesson_neither_uses_nor_opens_alices_demo(alices_demos):
    store, done, queued = alices_demos
    alice = open_as(ALICE, "lesson")
    assert not alice.exception and len(steps(alice)) == 5  # hers to learn from
    assert alice.query_params["job"] == str(done)

    bob = open_as(BOB, "lesson")
    assert not bob.exception and not refused(bob)
    assert steps(bob) == [] and SECRET not in everything_shown(bob)
    assert not any("waiting for a worker" in i.value for i in bob.info)  # not her running demo's progress
    assert [b.key for b in bob.button] == ["lesson_run_demo"]  # he is offered a demo of his own

    for job in (done, queued):
        bob = open_as(BOB, "lesson", job)
        assert not bob.exception and refused(bob)
        assert steps(bob) == [] and SECRET not in everything_shown(bob) and not bob.button

    trail = [e for e in Access(store, LOCAL_USER).trail() if e.subject != "local"]  # other tests' visits as local
    assert {(e.subject, e.action, e.job_id) for e in trail} == {
        ("alice-sub", "opened", done),
        ("bob-sub", "refused", done),
        ("bob-sub", "refused", queued),
    }

    bob = open_as(BOB, "lesson").button(key="lesson_run_demo").click().run()
    assert not bob.exception
    mine = store.list()[0]
    assert mine.owner == "bob-sub" and mine.kind == "demo" and mine.config["quick"] is True
    assert any("waiting for a worker" in i.value for i in bob.info)  # his own demo's progress
    assert store.get(queued).state == "queued"


@needs_fashion_mnist
def test_a_full_job_quota_refuses_the_lessons_demo_with_nothing_queued(alices_demos, monkeypatch):
    store, _, _ = alices_demos
    monkeypatch.setattr(limits, "_current", Limits(quota_jobs=1))
    # Bob's one job so far: a demo without an attack (no lesson in it, so the Lesson still offers one)
    store.submit("demo", store.get(1).config | {"scenario": "no_attack"}, owner="bob-sub")
    before = [(j.id, j.state) for j in store.list()]
    bob = open_as(BOB, "lesson").button(key="lesson_run_demo").click().run()
    assert not bob.exception
    assert any("1 jobs queued or running" in e.value and "nothing was queued" in e.value for e in bob.error)
    assert [(j.id, j.state) for j in store.list()] == before
