"""Teams on one server in a real browser (issue 21): three users log in through the real OpenID Connect
provider (npm's oidc-provider, benchmarks/login.py), each in their own browser context, to one dashboard.

Alice owns an audit (a tiny digits audit, queued straight into the store as hers, "alice" being her
`sub`) and a second one she cancels. Bob can neither list, open (also by `?job=`), download, review,
cancel nor retry them, and is told so without a word of what they hold; once Alice shares the audit
with him on the Jobs page, he reads and downloads it. Carol, the admin (ADMINS), sees both users' jobs,
downloads the access trail with both users' acts in it, and cancels Bob's job."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from benchmarks.login import ACCOUNTS, ADMINS, log_in
from kdcore.jobs.owners import ACCESS_REFUSED
from kdcore.jobs.store import JobStore
from tests.conftest import audit_config
from tests.e2e.conftest import choose, chromium, new_page, open_ready, wait_job

SECRET = "alice-secret-audit"  # her audits' label: must never reach bob's pages
HERS = (SECRET, "teacher.safetensors", "Alice Liddell")  # nor its model's file name, nor her name


@pytest.fixture(scope="module")
def team(login_server, digits_files):
    """Alice's two audits queued (the first runs on the dashboard's one worker while the others log in;
    the second waits behind it), then alice, bob and carol logged in, one browser context each."""
    assert ADMINS == ("carol",)
    store = JobStore(login_server["data"])
    cfg = audit_config(digits_files, kd_epochs=1, ft_epochs=1)
    audit = store.submit("audit", cfg, label=SECRET, owner="alice")
    spare = store.submit("audit", cfg, label=f"{SECRET} again", owner="alice")
    with chromium() as browser:
        pages = {}
        for name in ("alice", "bob", "carol"):
            pages[name] = new_page(browser)
            log_in(pages[name], login_server["url"], name)
        yield {"url": login_server["url"], "store": store, "audit": audit.id, "spare": spare.id, **pages}


def shown(page) -> str:
    return page.locator("body").inner_text()


def drawn(page, url: str, *ends: str) -> str:
    """Open `url` and wait until the page shows one of `ends` (what it draws last, refused or not); its text."""
    page.goto(url)
    page.wait_for_function("ends => ends.some(e => document.body.innerText.includes(e))", arg=ends, timeout=120_000)
    return shown(page)


def assert_nothing_of_hers(page) -> None:
    text = shown(page)
    for word in HERS:
        assert word not in text, (word, page.url)
    assert page.locator('[data-testid="stDownloadButton"]').count() == 0, page.url
    for action in ("Cancel", "Retry", "Share"):
        assert page.get_by_role("button", name=action, exact=True).count() == 0, (action, page.url)
    assert page.get_by_text("Reopen in the form").count() == 0, page.url


JOB_LIST_DRAWN = ("No jobs yet.", " queued · ")  # the Jobs page's list, empty or not


def test_bob_cannot_list_open_download_review_cancel_or_retry_alices_audits(team):
    url, alice, bob, audit, spare = team["url"], team["alice"], team["bob"], team["audit"], team["spare"]
    open_ready(alice, f"{url}/jobs", f".st-key-cancel-{spare}")
    alice.get_by_text("user alice;").wait_for()  # the provider's subject reached the dashboard
    alice.locator(f".st-key-cancel-{spare} button").click()
    alice.locator(f".st-key-retry-{spare} button").wait_for(timeout=120_000)  # hers to retry

    text = drawn(bob, f"{url}/jobs", *JOB_LIST_DRAWN)
    assert "No jobs yet." in text and "user bob;" in text
    assert_nothing_of_hers(bob)
    assert "No audits yet." in drawn(bob, url, "No audits yet.", SECRET)  # Home
    assert_nothing_of_hers(bob)
    for page in ("results", "candidates", "explain"):  # open, download, review: by deep link
        assert ACCESS_REFUSED in drawn(bob, f"{url}/{page}?job={audit}", ACCESS_REFUSED, SECRET), page
        assert_nothing_of_hers(bob)
    for job in (audit, spare):  # the Jobs page of a deep link: refused, and no cancel or retry
        text = drawn(bob, f"{url}/jobs?job={job}", *JOB_LIST_DRAWN)
        assert ACCESS_REFUSED in text and "No jobs yet." in text
        assert_nothing_of_hers(bob)
    assert team["store"].get(spare).state == "cancelled"  # as alice left it


def test_after_alice_shares_it_bob_reads_and_downloads_it(team):
    url, alice, bob, audit = team["url"], team["alice"], team["bob"], team["audit"]
    wait_job(team["store"].data_dir, audit)
    open_ready(alice, f"{url}/jobs", ".st-key-sharing")
    alice.locator(".st-key-sharing").get_by_text("Share an audit").click()
    choose(alice, "share_job", f"#{audit} audit")
    box = alice.locator(".st-key-share_with input")
    box.fill("bob")
    box.press("Enter")
    alice.wait_for_timeout(700)
    alice.locator(".st-key-share_button button").click()
    alice.get_by_text("👤 bob — read").wait_for()

    text = drawn(bob, f"{url}/results?job={audit}", ACCESS_REFUSED, "Grad-CAM and activation norms")
    assert ACCESS_REFUSED not in text and SECRET in text
    with bob.expect_download() as got:
        bob.get_by_role("button", name="report.json").click()
    assert json.loads(Path(got.value.path()).read_text())["detox"]  # the audit's own report
    text = drawn(bob, f"{url}/candidates?job={audit}", ACCESS_REFUSED, "not judge its samples")
    assert ACCESS_REFUSED not in text and "You may read this audit but not judge its samples" in text  # no review
    bob.goto(f"{url}/jobs")
    bob.get_by_text("👤 alice").wait_for(timeout=120_000)  # listed now, as hers
    assert bob.get_by_text("Reopen in the form").count() == 0  # hers to reopen, not his
    assert f"{SECRET} again" not in shown(bob)  # only the audit she shared


def test_an_admin_sees_both_users_audits_and_the_trail_of_both(team):
    url, store, alice, bob, carol = team["url"], team["store"], team["alice"], team["bob"], team["carol"]
    audit, spare = team["audit"], team["spare"]
    open_ready(bob, url, ".st-key-demo_quick")
    bob.get_by_role("button", name="Run the demo audit (quick").click()
    bob.wait_for_url("**/jobs?job=*")
    demo = store.get(int(bob.url.rsplit("job=", 1)[1]))
    assert demo.owner == "bob" and demo.kind == "demo"
    assert "quick demo" not in drawn(alice, url, SECRET)  # Home, newest first: bob's would come first

    text = drawn(carol, f"{url}/jobs", *JOB_LIST_DRAWN)
    assert "admin: you see every user’s jobs" in text
    assert SECRET in text and "quick demo" in text and "👤 alice" in text and "👤 bob" in text
    carol.locator(".st-key-trail").get_by_text("Access trail").click()
    with carol.expect_download() as got:
        carol.get_by_role("button", name="Download the trail (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(Path(got.value.path()).read_text())))
    seen = {(r["user"], r["action"], r["job"]) for r in rows}
    assert {
        ("alice", "cancelled", str(spare)),
        ("alice", "shared", str(audit)),
        ("bob", "refused", str(audit)),
        ("bob", "refused", str(spare)),
        ("bob", "opened", str(audit)),
        ("bob", "downloaded", str(audit)),
    } <= seen, seen
    assert {r["user"] for r in rows} == {"alice", "bob"}  # carol has done nothing yet

    carol.locator(f".st-key-cancel-{demo.id} button").click()  # an admin acts on anyone's job
    for _ in range(60):
        if store.get(demo.id).terminal:
            break
        carol.wait_for_timeout(1000)
    assert store.get(demo.id).state == "cancelled"
    assert ACCOUNTS["carol"].name in carol.locator("[data-testid=stSidebar]").inner_text()
