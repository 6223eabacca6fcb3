"""A data directory with real finished jobs (tiny digits audit, tiny Fashion-MNIST sweep) for page tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kdcore.jobs.store import JobStore
from kdcore.jobs.worker import run_job
from tests.conftest import audit_config


def _run_next(store: JobStore) -> None:
    job = store.claim("cpu", os.getpid())
    assert job is not None
    state = run_job(store, job, "cpu")
    assert state == "succeeded", store.get(job.id).error


@pytest.fixture(scope="session")
def app_home(tmp_path_factory, digits_files):
    """KDAUDIT_HOME with job 1 = a finished digits audit (train + test + trigger), job 2 = a tiny sweep."""
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
    _run_next(store)
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
    """Run `pages/<page>.py` inside the real entry point (so st.navigation, page links and
    switch_page work), optionally with `?job=<id>`."""
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=timeout)
    if job is not None:
        at.query_params["job"] = str(job)
    at.run()
    at.switch_page(f"pages/{page}.py")
    if job is not None:
        at.query_params["job"] = str(job)
    return at.run()
