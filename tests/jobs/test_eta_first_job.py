"""The first job of a kind has a whole-job ETA: its stages are sized from the config and its sets
(`kdcore.runs.sizes`) and timed by the seconds per image pass its own finished stages measured
(`kdcore.jobs.eta.sized_eta`). A hand-computed oracle, and the progress of a real tiny audit replayed."""

from __future__ import annotations

import time

import pytest

import kdcore.jobs.store as store_module
from kdcore.jobs import job as job_module
from kdcore.jobs.eta import job_eta, sized_eta
from kdcore.jobs.store import JobStore
from kdcore.jobs.worker import run_job
from kdcore.runs.sizes import stage_sizes
from kdcore.verdict.gather import VERDICT_NC
from kdcore.verdict.recovered_trigger import TRIGGER_IMAGES
from kdcore.views import NORM_IMAGES
from tests.conftest import TINY_DEMO, audit_config

SIZES = (("distill", 1000.0), ("detox", 200.0), ("finetune", 3000.0), ("view", 800.0))


def test_sized_eta_oracle():
    # 10 s into distill, half done (its own rate: 10 s to go): 20 s for 1000 passes → 0.02 s a pass
    assert sized_eta("distill", 10.0, 10.0, (("prepare", 5.0),), SIZES) == pytest.approx(10.0 + 0.02 * 4000)
    # distill took 20 s; detox 1 s in, no rate of its own: 0.02 × 200 − 1 left, then finetune + view
    done = (("prepare", 5.0), ("distill", 20.0))
    assert sized_eta("detox", 1.0, None, done, SIZES) == pytest.approx(3.0 + 0.02 * 3800)
    # detox took 6 s instead of 4: the rate is 26 s / 1200 passes; a stage without a size ('gather') adds 0
    done += (("detox", 6.0),)
    assert sized_eta("finetune", 0.0, None, done, SIZES) == pytest.approx(26 / 1200 * 3800)
    assert sized_eta("other", 1.0, 2.0, done, SIZES) == pytest.approx(2.0 + 26 / 1200 * 3800)
    # at its first report a stage's clock has just started (0 s, "0 s left"): its size says what is left
    assert sized_eta("finetune", 0.0, 0.0, done, SIZES) == pytest.approx(26 / 1200 * 3800)
    # nothing measured yet (reading files): the current stage's rest, as before
    assert sized_eta("prepare", 3.0, 1.0, (), SIZES) == 1.0
    assert sized_eta("prepare", 3.0, None, (), SIZES) is None
    # a profile from earlier jobs wins over the sizes
    profile = (("detox", 4.0), ("finetune", 50.0))
    assert job_eta("detox", 1.0, None, done[:2], profile, SIZES) == pytest.approx(3.0 + 50.0)


def test_stage_sizes_from_the_config_and_the_sets():
    demo = stage_sizes("demo", {**TINY_DEMO, "blind": True}, {})
    n, clean, test = TINY_DEMO["n_train"], TINY_DEMO["n_clean"], TINY_DEMO["n_test"]
    assert demo == (
        ("baseline", n * 1 * 3),
        ("teacher", n * 1 * 3),
        ("distill", 1 * clean * 0.9 * 3 + clean),  # 10 % held out for model selection, teacher once
        ("detox", n * 2),
        ("finetune", 1 * n * 0.9 * 3),  # 10 % held out for selection
        ("evaluate", 4 * test * 2),  # baseline, teacher, student, finetuned on clean and stamped images
        ("neural-cleanse", VERDICT_NC["steps"] * VERDICT_NC["batch_size"] * 10 * 3),  # the verdict's budget
        ("activation-clustering", n),
        ("recovered-trigger", TRIGGER_IMAGES * 11 * 2),  # teacher and student, clean and with 10 triggers
        ("view", NORM_IMAGES * 3),
    )
    cfg = {"model": "m.safetensors", "unlabeled": "u", "train": "t", "test": "s", "trigger": None}
    assert stage_sizes("audit", cfg, {}) is None  # not known before 'prepare' has read the sets
    audit = dict(stage_sizes("audit", cfg, {"unlabeled": 500, "train": 0, "test": 297, "classes": 10}))
    assert set(audit) == {"distill", "evaluate", "neural-cleanse", "recovered-trigger", "view"}  # no detox
    assert audit["evaluate"] == 2 * 297  # teacher and student, clean images only (no trigger)
    assert stage_sizes("defend", {}, {}) == ()  # a kind without sizes


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t


def test_first_audits_eta_covers_the_stages_still_to_come(digits_files, tmp_path, monkeypatch):
    """A real tiny blind audit, its progress reports recorded with their times, then replayed into a
    store that has never run an audit: from the first measured stage on, the ETA at each stage's
    start covers the time the job really still took, not only its current stage."""
    store = JobStore(tmp_path / "real")
    reports: list[tuple[float, str, int, int]] = []
    real_progress = store.progress

    def recorded(job_id, stage, step, total, message=""):
        reports.append((time.time(), stage, step, total))
        return real_progress(job_id, stage, step, total, message)

    monkeypatch.setattr(store, "progress", recorded)
    cfg = audit_config(digits_files, trigger=None)
    job = store.submit("audit", cfg)
    assert run_job(store, store.claim("cpu", pid=1, job_id=job.id), "cpu") == "succeeded"
    job = store.get(job.id)
    sizes = job.stage_sizes
    assert [n for n, _ in sizes] == [n for n, _ in job.stage_times if n not in ("starting", "prepare")]
    end = job.finished_at

    clock = Clock(job.started_at)
    monkeypatch.setattr(store_module, "time", clock)
    monkeypatch.setattr(job_module, "time", clock)
    fresh = JobStore(tmp_path / "first")  # no earlier audit: no profile
    replay = fresh.claim("cpu", pid=1, job_id=fresh.submit("audit", cfg).id)
    checked = []
    for t, stage, step, total in reports:
        clock.t = t
        first_of_stage = fresh.get(replay.id).stage != stage
        fresh.progress(replay.id, stage, step, total)
        if stage == "prepare" and step == total:
            fresh.set_stage_sizes(replay.id, sizes)  # what the worker records when 'prepare' ends
        now = fresh.get(replay.id)
        assert fresh.stage_profile("audit") == ()
        if first_of_stage and stage not in ("prepare", "distill"):
            checked.append((stage, fresh.eta(now), end - t))
    assert [s for s, _, _ in checked] == [n for n, _ in sizes[1:]]
    assert all(eta is not None and eta > 0 for _, eta, _ in checked), checked
    # Until Neural Cleanse has run, the job's rest is mostly sized work (training, passes over the sets),
    # and the ETA covers it; after it, the rest on tiny digits is mostly fixed costs (the recovered
    # trigger, writing the views: seconds whatever the set's size), which no size predicts.
    for stage, eta, left in checked[:4]:
        assert eta >= 0.25 * left, (stage, eta, left, job.stage_times)
