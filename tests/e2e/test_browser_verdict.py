"""Issue 10 in a real browser: a blind audit started from New audit shows its verdict card first on
Results. The digits model and its zips (tests/conftest.py's `digits_files`), the known trigger given
but the blind box ticked, so the verdict comes from label-free evidence only."""

from __future__ import annotations

import json

from app.verdict import verdict_headline
from kdcore.jobs.store import JobStore
from tests.e2e.conftest import digits_trigger, open_ready, shot, upload_digits, wait_job


def test_blind_audit_shows_the_verdict_card(server, page, digits_files, tmp_path):
    url, data = server["url"], server["data"]
    upload_digits(page, url, digits_files, tmp_path)
    digits_trigger(page)
    page.get_by_text("Judge the model as if the trigger were unknown (blind)").click()
    page.wait_for_timeout(700)
    page.get_by_text("Hyperparameters").click()
    for key, value in (("kd_epochs", "3"), ("ft_epochs", "1")):  # a short audit: the card is what is tested
        box = page.locator(f".st-key-{key} input")
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(700)
    page.get_by_role("button", name="Start the audit").click()
    page.wait_for_url("**/jobs?job=*")
    job_id = int(page.url.rsplit("job=", 1)[1])
    job = JobStore(data).get(job_id)
    assert job.kind == "audit" and job.config["blind"] is True and job.config["trigger"]["target"] == 7
    wait_job(data, job_id)
    report = json.loads(JobStore(data).get(job_id).report_path.read_text())
    verdict = report["verdict"]
    assert verdict["status"] in ("backdoor", "no_evidence", "inconclusive")
    assert report["evaluation_only"] == ["asr", "poison_acc"]  # the trigger only measured

    open_ready(page, f"{url}/results?job={job_id}", ".st-key-verdict-card")
    card = page.locator(".st-key-verdict-card")
    card.get_by_text(verdict_headline(verdict)).wait_for()
    text = card.inner_text()
    assert "confidence" in text and "evaluation only" in text
    for ev in verdict["evidence"]:  # every piece of evidence has its row
        assert ev["method"] in text, (ev["method"], text)
    shot(page, "Results", "digits_blind")
