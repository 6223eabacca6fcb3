"""A sweep job fans out into parts and a gathering job, on the local executor: the gathering job
waits for its parts, names the ones that failed, and a retry of them and of it completes the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kdcore.jobs.store import JobStore
from kdcore.jobs.worker import run_job
from tests.conftest import TINY_DEMO


def run_queue(store: JobStore) -> list[int]:
    ran = []
    while (job := store.claim("cpu", os.getpid())) is not None:
        run_job(store, job, "cpu")
        ran.append(job.id)
    return ran


def test_the_gathering_job_waits_names_a_failed_part_and_a_retry_completes(tmp_path):
    store = JobStore(tmp_path)
    setup = {**TINY_DEMO, "cache_dir": str(tmp_path / "cache")}
    sweep = store.submit("sweep", {"setup": setup, "budgets": [30, 60], "scenarios": ["attack"], "seeds": [0]})
    first, second = store.group(sweep.id)
    assert store.claim("cpu", 1, sweep.id) is None  # not while its parts are queued
    store.cancel(second.id)  # one part never runs
    assert run_queue(store) == [first.id, sweep.id]  # the parts first, then the gathering
    failed = store.get(sweep.id)
    assert failed.state == "failed" and "attack-60-seed0" in failed.error and "retry" in failed.error
    again = store.retry(second.id)
    assert again.group_id == sweep.id and again.run_dir == second.run_dir
    gather = store.retry(sweep.id)
    assert store.claim("cpu", 1, gather.id) is None  # it waits for the retried part
    assert run_queue(store) == [again.id, gather.id]
    done = store.get(gather.id)
    assert done.state == "succeeded", done.error
    rows = {(r["model"], r["budget"]) for r in json.loads(done.report_path.read_text())["rows"]}
    assert {("baseline", 0), ("backdoor", 0), ("student", 30), ("student", 60), ("finetuned", 60)} <= rows


def test_jobs_submit_of_a_sweep_over_three_seeds_queues_three_parts(tmp_path):
    sweep = ("--quick", "--seeds", "0,1,2", "--scenarios", "attack", "--budgets", "100")
    r = subprocess.run(
        [sys.executable, "-m", "kdcore", "jobs", "submit", "sweep", *sweep, "--json", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    parts = JobStore(tmp_path).group(job["id"])
    assert job["config"]["gather"] and job["parts"] == [p.id for p in parts]
    assert [(p.config["seeds"], p.label) for p in parts] == [([s], f"part attack-100-seed{s}") for s in (0, 1, 2)]
    assert all(p.run_dir.startswith(job["run_dir"] + "/parts/") for p in parts)
