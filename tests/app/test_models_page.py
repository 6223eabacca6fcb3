"""AppTest of the Models page: empty, it waits for uploads; with a finished audit of two models (one
failed), it shows one ranked row per model, each linking to its Results (or its Jobs entry), the
export, and no server path."""

from __future__ import annotations

import shutil

import pytest

from app.words import flags_in
from kdcore.jobs.store import JobStore
from kdcore.jobs.worker import run_job
from tests.app.conftest import open_page


def test_models_page_waits_for_uploads(kdaudit_home):
    at = open_page("models")
    assert not at.exception
    assert at.button(key="submit_models").disabled
    assert any("No audit of several models yet" in i.value for i in at.info)


@pytest.fixture()
def models_home(tmp_path, digits_files, monkeypatch):
    """A data directory with one finished audit_many job over two digits models: `suspect.safetensors`
    audited, `gone.safetensors` deleted after it was queued (its part failed)."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("suspect", "gone"):
        shutil.copy(digits_files["model"], models / f"{name}.safetensors")
    store = JobStore(tmp_path / "home")
    shared = {
        "unlabeled": str(digits_files["unlabeled"]),
        "test": str(digits_files["test"]),
        "max_unlabeled": 200,
        "kd": {"distill": {"epochs": 1}, "finetune": {"epochs": 1}},
        "neural_cleanse": {"steps": 20, "n_images": 64, "n_holdout": 32, "batch_size": 16},
    }
    job = store.submit("audit_many", {"models": sorted(str(p) for p in models.iterdir()), "audit": shared})
    (models / "gone.safetensors").unlink()
    while (claimed := store.claim("cpu", 1)) is not None:
        run_job(store, claimed, "cpu")
    assert store.get(job.id).state == "succeeded", store.get(job.id).error
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path / "home"))
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    return store, job


def test_models_page_ranks_the_models_and_links_each_to_its_results(models_home):
    store, job = models_home
    gone, suspect = store.group(job.id)  # sorted by name: gone first
    at = open_page("models", job=job.id)
    assert not at.exception
    table = next(m.value for m in at.markdown if "P(backdoor)" in m.value)
    assert f"[suspect.safetensors](/results?job={suspect.id})" in table
    assert f"[gone.safetensors](/jobs?job={gone.id})" in table  # a failed audit links to its Jobs entry
    lines = [line for line in table.splitlines() if "safetensors" in line]
    assert len(lines) == 2 and lines[0].startswith("| 1 | [suspect") and "failed" in lines[1], lines
    assert "gone.safetensors does not exist" in lines[1]  # the reason, with the file's name only
    page = " ".join(str(getattr(e, "value", "")) for e in (*at.markdown, *at.caption, *at.error))
    assert str(store.data_dir) not in page and "/tmp" not in page and not flags_in(page)  # no server path, no flag
