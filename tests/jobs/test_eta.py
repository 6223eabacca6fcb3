"""The whole job's ETA: stage times recorded by a real job store, the profile of a kind from its
earlier succeeded jobs, and the formula of `kdcore.jobs.eta` checked against hand-computed values."""

from __future__ import annotations

import sqlite3

import pytest

import kdcore.jobs.store as store_module
from kdcore.jobs import job as job_module
from kdcore.jobs.eta import job_eta, median_profile, speed
from kdcore.jobs.store import JobStore


class Clock:
    """A stand-in for the store's and the job's `time` module: `time()` returns what the test set."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def time(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(store_module, "time", c)  # the store's writes
    monkeypatch.setattr(job_module, "time", c)  # the Job's "now"
    return c


def run_job(store: JobStore, clock: Clock, stages: dict[str, float], finish: str | None = "succeeded"):
    """Submit a demo job, claim it and walk it through `stages` (name → seconds) with the fake clock."""
    job = store.submit("demo", {})
    store.claim("cpu", pid=1, job_id=job.id)
    for name, seconds in stages.items():
        if name != "starting":
            store.progress(job.id, name, 0, 10)
        clock.t += seconds
    if finish:
        store.finish(job.id, finish)
    return store.get(job.id)


STAGES = {"starting": 2.0, "prepare": 10.0, "distill": 100.0, "detox": 5.0, "evaluate": 20.0}


def test_the_store_records_each_stage_and_its_seconds(tmp_path, clock):
    s = JobStore(tmp_path)
    job = run_job(s, clock, STAGES)
    assert job.stage_times == tuple(STAGES.items())
    assert s.stage_profile("demo") == tuple(STAGES.items())
    assert s.stage_profile("audit") == ()
    failed = run_job(s, clock, {"starting": 1.0, "prepare": 99.0}, finish="failed")
    assert failed.stage_times == (("starting", 1.0), ("prepare", 99.0))
    assert s.stage_profile("demo") == tuple(STAGES.items())  # only succeeded jobs make the profile


def test_eta_is_the_whole_jobs_from_earlier_jobs_of_the_kind(tmp_path, clock):
    s = JobStore(tmp_path)
    run_job(s, clock, STAGES)
    job = run_job(s, clock, {"starting": 2.0, "prepare": 4.0}, finish=None)  # 4 s into prepare, no rate yet
    assert job.stage == "prepare" and job.step == 0
    # prepare's rest (10 − 4) + distill + detox + evaluate, at the profile's pace
    assert s.eta(job) == pytest.approx(6.0 + 100.0 + 5.0 + 20.0)
    assert job.eta() is None  # without a profile the stage has no rate to go by

    clock.t += 16.0  # prepare took 20 s: twice the profile's 10 s
    s.progress(job.id, "distill", 0, 100)
    clock.t += 60.0
    s.progress(job.id, "distill", 50, 100)  # half of distill in 60 s: 60 s to go by its own rate
    job = s.get(job.id)
    assert job.stage_times == (("starting", 2.0), ("prepare", 20.0))
    assert job.stage_eta() == pytest.approx(60.0)
    assert s.eta(job) == pytest.approx(60.0 + 2.0 * (5.0 + 20.0))  # later stages at this job's speed
    assert job.eta() == pytest.approx(60.0)  # no profile: the current stage's rest, as before


def test_profile_is_the_median_of_recent_jobs_in_run_order(tmp_path, clock):
    s = JobStore(tmp_path)
    for distill in (100.0, 300.0, 200.0):
        run_job(s, clock, {**STAGES, "distill": distill})
    assert dict(s.stage_profile("demo"))["distill"] == 200.0
    assert dict(s.stage_profile("demo", jobs=2))["distill"] == 250.0  # the two newest
    assert [n for n, _ in s.stage_profile("demo")] == list(STAGES)


def test_eta_formula_oracle():
    profile = (("starting", 1.0), ("prepare", 10.0), ("distill", 100.0), ("evaluate", 20.0))
    assert median_profile([(("a", 1.0), ("b", 2.0)), (("a", 3.0),), (("a", 5.0), ("a", 1.0))]) == (
        ("a", 3.0),
        ("b", 2.0),
    )  # a stage that ran twice is summed (6); medians over the jobs that ran it
    assert speed((("starting", 50.0), ("prepare", 30.0)), profile) == pytest.approx(3.0)  # 'starting' ignored
    assert speed((("prepare", 0.1),), (("prepare", 0.5),)) == 1.0  # too short to compare
    assert speed((("prepare", 1e6),), profile) == 20.0  # clamped
    # a stage the profile does not know (a retry's new stage): every profile stage not yet done follows
    assert job_eta("other", 1.0, 4.0, (("prepare", 10.0),), profile) == pytest.approx(4.0 + 1.0 + 100.0 + 20.0)
    assert job_eta("distill", 500.0, None, (), profile) == pytest.approx(0.0 + 20.0)  # overran: rest 0
    assert job_eta("distill", 5.0, None, (), ()) is None


def test_a_store_from_before_stage_times_opens_and_reads(tmp_path):
    db = tmp_path / "jobs.sqlite3"
    c = sqlite3.connect(db)
    old_schema = job_module.SCHEMA.replace(",\n    stage_times TEXT NOT NULL DEFAULT '[]'", "")
    assert "stage_times" not in old_schema
    c.executescript(old_schema.replace("    stage_started_at REAL,\n", ""))
    c.execute("INSERT INTO jobs (kind, config, created_at) VALUES ('demo', '{}', 1.0)")
    c.commit()
    c.close()
    job = JobStore(tmp_path).get(1)
    assert job.stage_times == () and job.stage_started_at is None
