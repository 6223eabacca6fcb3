"""A data directory with real finished jobs (tiny digits audit, tiny Fashion-MNIST sweep) for page tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import jobs_client
from kdcore.jobs.store import JobStore
from kdcore.jobs.worker import run_job
from tests.conftest import audit_config


def _run_next(store: JobStore) -> None:
    job = store.claim("cpu", os.getpid())
    assert job is not None
    state = run_job(store, job, "cpu")
    assert state == "succeeded", store.get(job.id).error


def _run_all(store: JobStore) -> None:
    while store.list(("queued",)):
        _run_next(store)


@pytest.fixture(scope="session")
def app_home(tmp_path_factory, digits_files):
    """KDAUDIT_HOME with job 1 = a finished digits audit (train + test + trigger), job 2 = a tiny sweep
    (its four cells ran as parts, jobs 3–6, which job 2 gathered)."""
    home = tmp_path_factory.mktemp("kdaudit-home")
    store = JobStore(home)
    store.submit("audit", audit_config(digits_files, kd_epochs=12, ft_epochs=2), label="digits audit")
    _run_next(store)
    store.submit(
        "sweep",
        {
            "setup": {
                "n_train": 600,
                "n_clean": 60,
                "n_poison": 30,
                "n_test": 200,
                "cache_dir": str(home / "cache"),
                "teacher": {"epochs": 1},
                "kd": {"distill": {"epochs": 1}, "finetune": {"epochs": 1}},
            },
            "budgets": [30, 60],
        },
        label="tiny sweep",
    )
    _run_all(store)
    assert store.get(2).state == "succeeded" and len(store.group(2)) == 4
    return home


@pytest.fixture()
def kdaudit_home(app_home, monkeypatch):
    monkeypatch.setenv("KDAUDIT_HOME", str(app_home))
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    return app_home


ROOT = Path(__file__).resolve().parents[2]


def open_page(page: str, job: int | None = None, timeout: float = 60) -> AppTest:
    """Run `app_pages/<page>.py` inside the real entry point (so st.navigation, page links and
    switch_page work), optionally with `?job=<id>`."""
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=timeout)
    if job is not None:
        at.query_params["job"] = str(job)
    at.run()
    at.switch_page(f"app_pages/{page}.py")
    if job is not None:
        at.query_params["job"] = str(job)
    return at.run()


def _copy_jobs_db(src_home: Path, dst_home: Path) -> None:
    """Copy a data directory's job database (the run directories it points to stay where they are)."""
    import sqlite3

    src = sqlite3.connect(JobStore(src_home).path)
    dst = sqlite3.connect(Path(dst_home) / "jobs.sqlite3")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


DEFENSE_JOBS = (  # tiny settings: seconds each on the digits audit
    ("linf-pruning", {"steps": 6}, False),
    ("activation-clustering", {"reducer": "pca", "n_init": 2}, False),
    ("neural-cleanse", {"steps": 20, "round_steps": 10, "n_images": 64, "n_holdout": 32, "batch_size": 16}, False),
    ("nad", {"teacher_epochs": 1, "epochs": 1}, True),
    ("fine-pruning", {"finetune": {"epochs": 1}}, True),
    ("bcu", {"epochs": 1}, False),
    ("kd", {"distill": {"epochs": 2, "batch_size": 64}, "finetune": {"epochs": 1, "patience": 0}}, False),
)


@pytest.fixture(scope="session")
def defenses_home(app_home, digits_files, tmp_path_factory):
    """A copy of app_home's job database plus finished `defend` jobs on job 1 (the digits audit), one
    per method in DEFENSE_JOBS (labelled-data baselines get the digits' labelled clean images), run through
    the real store + worker.
    Returns (home, {method: job id})."""
    home = tmp_path_factory.mktemp("kdaudit-defenses")
    _copy_jobs_db(app_home, home)
    store = JobStore(home)
    source = store.get(1)
    ids = {}
    for method, params, labelled in DEFENSE_JOBS:
        cfg = {"method": method, "params": params, "source_run": source.run_dir, "device": "cpu"}
        if labelled:
            cfg["clean_labeled"] = str(digits_files["clean_labeled"])
        job = store.submit("defend", cfg, label=f"{method} on #{source.id}")
        claimed = store.claim("cpu", os.getpid(), job_id=job.id)
        assert claimed is not None
        state = run_job(store, claimed, "cpu")
        assert state == "succeeded", store.get(job.id).error
        ids[method] = job.id
    return home, ids


@pytest.fixture()
def defenses_env(defenses_home, tmp_path, monkeypatch):
    """KDAUDIT_HOME = a private copy of defenses_home's database, so jobs queued by a test never leak."""
    home, ids = defenses_home
    _copy_jobs_db(home, tmp_path)
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path))
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    return tmp_path, ids


@pytest.fixture()
def submitted(monkeypatch):
    """The configs the New audit page submits, each one queued by the real job store of the test's data
    directory (`JobStore.submit` validates it as it would for a user): a config the store refuses is
    not recorded, and the page shows the refusal."""
    got: list[dict] = []
    submit = jobs_client.submit_audit

    def recorded_submit(config: dict, label: str = ""):
        job = submit(config, label=label)
        got.append(config)
        return job

    monkeypatch.setattr("app.jobs_client.submit_audit", recorded_submit)
    return got


@pytest.fixture()
def empty_home(tmp_path, monkeypatch):
    """KDAUDIT_HOME = an empty folder, no trust in uploaded code, and Streamlit's caches cleared."""
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path))
    monkeypatch.delenv("KDAUDIT_TRUST_CODE", raising=False)
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    return tmp_path


@pytest.fixture()
def fake_runs(app_home, tmp_path, monkeypatch):
    """KDAUDIT_HOME = a private copy of app_home's jobs; `make(extra)` queues a finished audit whose
    run folder holds job 1's report.json with `extra` keys set (None deletes a key). Returns make."""
    _copy_jobs_db(app_home, tmp_path)
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path))
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    store = JobStore(tmp_path)
    source = store.get(1)
    base = json.loads((Path(source.run_dir) / "report.json").read_text())

    def make(extra: dict) -> int:
        run = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
        run.mkdir()
        report = {k: v for k, v in (base | extra).items() if v is not None}
        (run / "report.json").write_text(json.dumps(report))
        job = store.submit("audit", source.config, label="hand-written", run_dir=str(run))
        assert store.claim("cpu", os.getpid(), job.id) is not None
        store.finish(job.id, "succeeded")
        return job.id

    return make


@pytest.fixture(scope="session")
def lesson_home(tmp_path_factory):
    """KDAUDIT_HOME with job 1 = the built-in demo at its smallest (`TINY_DEMO`, seconds), judged blind as
    Home's button does (Neural Cleanse at tiny settings), run through the real store and worker."""
    from tests.conftest import TINY_DEMO

    home = tmp_path_factory.mktemp("kdaudit-lesson")
    store = JobStore(home)
    nc = {"steps": 20, "round_steps": 10, "n_images": 64, "n_holdout": 32, "batch_size": 16}
    cfg = {**TINY_DEMO, "blind": True, "neural_cleanse": nc, "device": "cpu", "cache_dir": str(home / "cache")}
    store.submit("demo", cfg, label="quick demo")
    _run_next(store)
    return home


@pytest.fixture()
def lesson_env(lesson_home, monkeypatch):
    monkeypatch.setenv("KDAUDIT_HOME", str(lesson_home))
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    return lesson_home
