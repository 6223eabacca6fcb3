"""benchmarks/defenses.py as jobs: one `defend` job per (attack, method, seed), run by two local
worker processes on a tiny Fashion-MNIST setup; the table is built from the jobs' reports, and a job
that did not succeed is a row that says so."""

from __future__ import annotations

import os

from benchmarks.defenses import SUSPECT, demo_config, job_rows, run_jobs, table
from kdcore.config import to_dict
from kdcore.defenses import get_defense
from kdcore.jobs.store import JobStore
from tests.conftest import TINY_DEMO, needs_fashion_mnist

METHODS = ["linf-pruning", "activation-clustering"]  # seconds each on 600 images, with their defaults


@needs_fashion_mnist
def test_the_comparison_runs_as_jobs_on_two_local_workers(tmp_path):
    data = tmp_path / "store"
    rows = run_jobs(data, ["badnets"], METHODS, [1], False, tmp_path, workers=2, device="cpu", setup=TINY_DEMO)
    store = JobStore(data)
    jobs = {j.id: j for j in store.list()}
    assert len(jobs) == 2 and all(j.state == "succeeded" for j in jobs.values()), [
        (j.id, j.state, j.error) for j in jobs.values()
    ]
    assert len({j.run_dir for j in jobs.values()}) == 2  # each job its own run dir
    assert {r["job"] for r in rows} == set(jobs)  # every row from a job, every job in the rows
    assert all(r["state"] == "succeeded" and r["node"] == "" and r["seed"] == 1 for r in rows)
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {SUSPECT, *METHODS}
    assert by_method[SUSPECT]["asr"] is not None and by_method["linf-pruning"]["asr"] is not None
    assert by_method["activation-clustering"]["precision"] is not None  # a detector's row
    want = to_dict(demo_config("badnets", False, tmp_path, 1, TINY_DEMO))
    for name in METHODS:
        job = jobs[by_method[name]["job"]]
        assert job.label == f"defenses: badnets × {name} × seed 1"
        assert job.config["demo"] == {**want, "device": job.config["demo"]["device"]}  # run_attack's setup
        assert job.config["params"] == {}  # the method's defaults, as in-process
        assert by_method[name]["config"] == to_dict(get_defense(name).config_class())
        assert job.config["seed"] == 1
    text = table(rows)
    assert all(f"| badnets | {m} |" in text for m in [SUSPECT, *METHODS])


def test_a_job_that_did_not_succeed_is_a_row_that_says_why(tmp_path):
    store = JobStore(tmp_path)
    cfg = demo_config("badnets", False, tmp_path, 0, TINY_DEMO)
    job = store.submit("defend", {"method": "nad", "demo": to_dict(cfg), "device": "cpu"})
    store.claim("cpu", os.getpid())
    store.finish(job.id, "failed", "Traceback (most recent call last):\n  File x\nRuntimeError: out of memory")
    queued = store.submit("defend", {"method": "bcu", "demo": to_dict(cfg), "device": "cpu"})
    rows = job_rows("badnets", 0, {"nad": store.get(job.id), "bcu": store.get(queued.id)})
    assert [(r["method"], r["job"], r["state"]) for r in rows] == [
        ("nad", job.id, "failed"),
        ("bcu", queued.id, "queued"),
    ]
    assert rows[0]["note"] == "failed: RuntimeError: out of memory" and rows[0]["clean_acc"] is None
    assert rows[0]["needs_labels"] and rows[0]["family"] == "repairer"
    assert "never ran" in rows[1]["note"]
    assert "| badnets | nad | — | — | — | — | — | — | yes | seed 0: failed: RuntimeError: out of memory |" in table(
        rows
    )
