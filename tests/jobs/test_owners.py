"""Owners, sharing, quotas and the access trail in the real job store (kdcore.jobs.access).

Users are `User` values, as the dashboard builds them from its signed-in user; the jobs are tiny demo
configs, queued and never run (nothing here needs a worker)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.errors import AccessError, QuotaError
from kdcore.jobs.access import Access
from kdcore.jobs.owners import ACCESS_REFUSED, LOCAL_USER, User
from kdcore.jobs.review import Reviews
from kdcore.jobs.store import JobStore
from kdcore.limits import Limits
from tests.conftest import TINY_DEMO

ALICE, BOB, ROOT = User("alice-sub", "Alice"), User("bob-sub", "Bob"), User("root-sub", "Root", is_admin=True)
OLD_STORE = Path(__file__).parent / "data" / "store_before_owners.sqlite3"
REPO = Path(__file__).resolve().parents[2]


def demo(tmp_path: Path) -> dict:
    return {**TINY_DEMO, "cache_dir": str(tmp_path / "cache")}


@pytest.fixture()
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path)


def finished(store: JobStore, job_id: int, state: str = "succeeded") -> None:
    assert store.claim("cpu", os.getpid(), job_id) is not None
    store.finish(job_id, state)


def test_another_user_neither_sees_nor_acts_on_an_audit_and_learns_nothing_of_it(store, tmp_path):
    alice, bob = Access(store, ALICE), Access(store, BOB)
    job = alice.submit("demo", demo(tmp_path), label="secret-model-v7")
    failed = alice.submit("demo", demo(tmp_path), label="secret-model-v8")
    finished(store, failed.id, "failed")
    assert job.owner == "alice-sub" and [j.id for j in alice.jobs()] == [failed.id, job.id]
    assert bob.jobs() == []
    for act in (
        lambda: bob.open(job.id),
        lambda: bob.downloaded(job.id, "report.json"),
        lambda: bob.cancel(job.id),
        lambda: bob.retry(failed.id),
        lambda: bob.review(job.id, [1], "poison"),
        lambda: bob.share(job.id, "bob-sub", "review"),
        lambda: bob.shares(job.id),
    ):
        with pytest.raises(AccessError) as refused:
            act()
        assert str(refused.value) == ACCESS_REFUSED and "secret" not in str(refused.value)
    assert store.get(job.id).state == "queued" and len(store.list()) == 2  # nothing cancelled, nothing retried
    assert Reviews(store).get(job.run_dir) == {}
    trail = Access(store, ROOT).trail()
    assert {(e.subject, e.action) for e in trail} == {("bob-sub", "refused")}
    assert {e.detail.split(":")[0] for e in trail} >= {"opened", "downloaded", "cancelled", "retried", "reviewed"}


def test_a_share_lets_the_user_read_or_review_but_never_manage_and_the_trail_shows_both(store, tmp_path):
    alice, bob = Access(store, ALICE), Access(store, BOB)
    job = alice.submit("demo", demo(tmp_path), label="shared audit")
    alice.share(job.id, "bob-sub", "read")
    assert [j.id for j in bob.jobs()] == [job.id]
    assert bob.open(job.id).id == job.id
    bob.downloaded(job.id, "report.json")
    with pytest.raises(AccessError, match="not review it"):
        bob.review(job.id, [2], "poison")
    alice.share(job.id, "bob-sub", "review")  # the same share, raised to review
    assert [(s.subject, s.role) for s in alice.shares(job.id)] == [("bob-sub", "review")]
    assert bob.review(job.id, [2, 4], "poison", reviewer="Bob B.") == 2
    assert {v.owner for v in Reviews(store).get(job.run_dir).values()} == {"bob-sub"}
    with pytest.raises(AccessError, match="Only this audit's owner"):
        bob.cancel(job.id)
    assert Access(store, User("carol-sub")).jobs() == []  # shared with Bob, not with everyone
    alice.unshare(job.id, "bob-sub")
    assert bob.jobs() == []
    trail = [(e.subject, e.action) for e in reversed(Access(store, ROOT).trail(job.id))]
    assert trail == [
        ("alice-sub", "shared"),
        ("bob-sub", "opened"),
        ("bob-sub", "downloaded"),
        ("bob-sub", "refused"),
        ("alice-sub", "shared"),
        ("bob-sub", "reviewed"),
        ("bob-sub", "refused"),
        ("alice-sub", "unshared"),
    ]


def test_an_admin_sees_and_manages_every_users_jobs_and_only_an_admin_reads_the_trail(store, tmp_path):
    a = Access(store, ALICE).submit("demo", demo(tmp_path))
    b = Access(store, BOB).submit("demo", demo(tmp_path))
    root = Access(store, ROOT)
    assert {j.id for j in root.jobs()} == {a.id, b.id}
    assert root.cancel(a.id).state == "cancelled"
    assert root.retry(a.id).owner == "alice-sub"  # a retry stays the owner's audit
    with pytest.raises(AccessError, match="admin"):
        Access(store, ALICE).trail()
    assert [e.action for e in reversed(root.trail())] == ["cancelled", "retried"]


def test_a_share_of_a_fan_out_reaches_its_parts_and_a_retry_keeps_the_share(store, tmp_path):
    alice, bob = Access(store, ALICE), Access(store, BOB)
    sweep = alice.submit("sweep", {"setup": demo(tmp_path), "budgets": [30, 60], "scenarios": ["attack"]})
    parts = store.group(sweep.id)
    assert {p.owner for p in parts} == {"alice-sub"} and bob.jobs() == []
    alice.share(sweep.id, "bob-sub", "read")
    assert {j.id for j in bob.jobs()} == {sweep.id, *(p.id for p in parts)}
    assert bob.open(parts[0].id).id == parts[0].id
    single = alice.submit("demo", demo(tmp_path))
    alice.share(single.id, "bob-sub", "read")
    store.cancel(single.id)
    again = alice.retry(single.id)
    assert bob.open(again.id).id == again.id


def test_the_job_quota_refuses_the_next_submit_leaves_the_queue_and_spares_another_user(store, tmp_path):
    two = Limits(quota_jobs=2)
    alice, bob = Access(store, ALICE, two), Access(store, BOB, two)
    first = alice.submit("demo", demo(tmp_path))
    alice.submit("sweep", {"setup": demo(tmp_path), "budgets": [30, 60], "scenarios": ["attack"]})  # counts once
    before = [(j.id, j.state) for j in store.list()]
    with pytest.raises(QuotaError, match=r"2 jobs queued or running.*nothing was queued"):
        alice.submit("demo", demo(tmp_path))
    assert [(j.id, j.state) for j in store.list()] == before
    assert bob.submit("demo", demo(tmp_path)).owner == "bob-sub"
    alice.cancel(first.id)  # room again
    assert alice.submit("demo", demo(tmp_path)).owner == "alice-sub"
    with pytest.raises(QuotaError):
        alice.retry(first.id)  # a retry is a new job in the queue, within the same quota


def test_the_upload_quota_charges_each_user_once_per_file_and_refuses_before_storing(store, tmp_path):
    limits = Limits(quota_upload_bytes=1000)
    alice, bob = Access(store, ALICE, limits), Access(store, BOB, limits)
    a, b = store.data_dir / "uploads" / "aa" / "m.pt", store.data_dir / "uploads" / "bb" / "x.zip"
    assert alice.keep_upload(a, 600) is True
    assert alice.keep_upload(a, 600) is False  # the same file again: charged once
    with pytest.raises(QuotaError, match=r"1\.2 KiB.*above your quota of 1,000 bytes"):
        alice.keep_upload(b, 600)
    assert alice.usage() == {"jobs": 0, "upload_bytes": 600}
    assert bob.keep_upload(a, 600) is True  # Bob keeps the same file on his own quota
    alice.forget_upload(a)
    assert alice.keep_upload(b, 600) is True


def test_the_trail_is_append_only_for_any_client_of_the_database(store, tmp_path):
    job = Access(store, ALICE).submit("demo", demo(tmp_path))
    Access(store, ALICE).open(job.id)
    c = sqlite3.connect(store.path)
    try:
        for sql in ("UPDATE access_trail SET subject='nobody'", "DELETE FROM access_trail"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                c.execute(sql)
    finally:
        c.close()
    assert [(e.subject, e.action) for e in Access(store, ROOT).trail()] == [("alice-sub", "opened")]


def test_a_store_written_by_the_code_before_owners_opens_with_every_row_the_local_users(tmp_path):
    """tests/jobs/data/store_before_owners.sqlite3 was written by main at f61bc97 (the code before
    owners): job 1 a finished demo ("old audit") with two poison verdicts by "Ann", job 2 a queued demo."""
    shutil.copy(OLD_STORE, tmp_path / "jobs.sqlite3")
    store = JobStore(tmp_path)
    assert [(j.id, j.label, j.owner) for j in store.list()] == [(2, "old queued", "local"), (1, "old audit", "local")]
    verdicts = Reviews(store).get(store.get(1).run_dir)
    assert {(s, v.verdict, v.reviewer, v.owner) for s, v in verdicts.items()} == {
        (3, "poison", "Ann", "local"),
        (5, "poison", "Ann", "local"),
    }
    assert Access(store, BOB).jobs() == []  # a team member sees none of the single-user audits
    local = Access(store, LOCAL_USER)
    assert [j.id for j in local.jobs()] == [2, 1] and local.cancel(2).state == "cancelled"
    new = local.submit("demo", demo(tmp_path))
    assert new.owner == "local" and new.id == 3
    assert local.review(1, [3], "clean") == 1


def test_nobody_signed_in_sees_nothing_and_may_neither_submit_nor_upload(store, tmp_path):
    Access(store, ALICE).submit("demo", demo(tmp_path))
    nobody = Access(store, User(""))
    assert nobody.jobs() == []
    with pytest.raises(AccessError, match="Sign in"):
        nobody.submit("demo", demo(tmp_path))
    with pytest.raises(AccessError, match="Sign in"):
        nobody.keep_upload(store.data_dir / "uploads" / "aa" / "m.pt", 10)


def test_the_cli_works_on_a_migrated_store_as_the_local_user(tmp_path):
    shutil.copy(OLD_STORE, tmp_path / "jobs.sqlite3")
    cli = [sys.executable, "-m", "kdcore", "jobs"]
    listed = subprocess.run(
        [*cli, "list", "--json", "--data-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO
    )
    assert listed.returncode == 0, listed.stderr
    assert [(j["id"], j["owner"]) for j in json.loads(listed.stdout)] == [(2, "local"), (1, "local")]
    cancel = subprocess.run(
        [*cli, "cancel", "2", "--data-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO
    )
    assert cancel.returncode == 0, cancel.stderr
    assert JobStore(tmp_path).get(2).state == "cancelled"
