"""The job log (<run_dir>/log.txt, the Jobs page's log tail) names every stage a job goes through, when it
starts and when it ends with its time: a real tiny blind audit on digits, run by the worker's `run_job`."""

from __future__ import annotations

import re
from pathlib import Path

from kdcore.jobs.store import JobStore
from kdcore.jobs.worker import run_job
from tests.conftest import audit_config

# What a blind audit with a training and a test set goes through (kdcore.runs.audit, kdcore.pipeline, the
# verdict's pieces in kdcore.verdict.gather, the views); 'starting' is the worker's, from the claim to the first report.
AUDIT_STAGES = (
    "starting", "prepare", "distill", "detox", "finetune", "evaluate",
    "neural-cleanse", "activation-clustering", "recovered-trigger", "view",
)  # fmt: skip


def test_the_job_log_names_every_stage_when_it_starts_and_ends(digits_files, tmp_path):
    store = JobStore(tmp_path)
    job = store.submit("audit", audit_config(digits_files, trigger=None, kd_epochs=1, ft_epochs=1))
    assert run_job(store, store.claim("cpu", pid=1, job_id=job.id), "cpu") == "succeeded"
    job = store.get(job.id)
    text = (Path(job.run_dir) / "log.txt").read_text()
    started = re.findall(rf"job {job.id}: stage ([\w-]+) started", text)
    ended = re.findall(rf"job {job.id}: stage ([\w-]+) ended after (\d+\.\d) s", text)
    assert [n for n, _ in job.stage_times] == list(AUDIT_STAGES)  # the stages the store saw, in order
    assert started == list(AUDIT_STAGES[1:]), text  # each one's start ('starting' opens the log)
    assert [n for n, _ in ended] == list(AUDIT_STAGES), text  # and its end, with its time
    # the times in the log are the store's (both taken by the worker, a database write apart)
    for (name, logged), (_, stored) in zip(ended, job.stage_times, strict=True):
        assert abs(float(logged) - stored) < 0.5, (name, logged, stored)
    assert text.rstrip().endswith("the job succeeded")
    first, prepare = f"job {job.id} (audit) on cpu: stage starting", f"job {job.id}: stage prepare started"
    assert text.index(first) < text.index(prepare)
    assert len(re.findall("stage distill: running", text)) == 1  # the worker's log is not added twice
