"""The job timeout: a real (tiny) audit run past its kind's timeout ends `failed` with the reason,
and keeps the stages it finished."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdcore import limits
from kdcore.jobs.store import JobStore
from kdcore.jobs.worker import job_timeout_s, run_job
from tests.conftest import audit_config


@pytest.fixture()
def audit_timeout():
    """Sets job_timeout_audit_s for this process (as `kdcore --limit` does) and restores it."""
    old = limits.current()

    def set_to(seconds: float) -> None:
        limits.use(limits.with_overrides(old, [f"job_timeout_audit_s={seconds}"]))

    yield set_to
    limits.use(old)


def test_defaults_per_kind():
    assert {k: job_timeout_s(k) for k in ("demo", "audit", "sweep", "defend", "refine")} == {
        "demo": 3600,
        "audit": 6 * 3600,
        "sweep": 24 * 3600,
        "defend": 3 * 3600,
        "refine": 3600,
    }


def test_an_audit_past_its_timeout_fails_with_the_reason_and_keeps_finished_stages(
    digits_files, tmp_path, audit_timeout
):
    store = JobStore(tmp_path)
    # distillation (1 epoch, 200 images) finishes in about a second; fine-tuning for 2000 epochs would not
    store.submit("audit", audit_config(digits_files, kd_epochs=1, ft_epochs=2000, max_unlabeled=200))
    job = store.claim("cpu", os.getpid())
    audit_timeout(8)
    state = run_job(store, job, "cpu")
    done = store.get(job.id)
    assert state == "failed" == done.state, done.error
    assert done.error.startswith("stopped after ") and "the job timeout for audit is 8 s" in done.error
    assert "--limit job_timeout_audit_s=SECONDS" in done.error and "jobs retry" in done.error
    finished = [p.parent.name for p in Path(done.run_dir, "stages").glob("*/stage.json")]
    assert any(name.startswith("distill") for name in finished), finished
    assert not Path(done.run_dir, "report.json").exists()


def test_a_worker_started_with_limit_applies_it(digits_files, tmp_path):
    import subprocess
    import sys

    store = JobStore(tmp_path)
    job = store.submit("audit", audit_config(digits_files, kd_epochs=300, ft_epochs=1))
    root = Path(__file__).resolve().parents[2]
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdcore",
            "--limit",
            "job_timeout_audit_s=3",
            "worker",
            "--once",
            "--device",
            "cpu",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode == 0, worker.stderr
    done = store.get(job.id)
    assert done.state == "failed" and "the job timeout for audit is 3 s" in done.error, done.error
