"""Results and report views on audits of models that are not registry names (ONNX graphs, Python
classes): the architecture line names the file and the chosen layers, and the model download carries
the file the architecture is defined by."""

from __future__ import annotations

import io
import json
import zipfile
from types import SimpleNamespace

import pytest

from app.report_html import summary_pairs
from app.results import model_zip


def test_the_summary_names_the_architecture_file_and_the_chosen_layers():
    spec = {
        "arch": "onnx",
        "num_classes": 10,
        "input_shape": [1, 28, 28],
        "source": "/data/uploads/ab12/suspect.onnx",
        "source_sha256": "0" * 64,
        "layers": {"last_conv": "features/Conv_1"},
    }
    pairs = dict(summary_pairs(SimpleNamespace(id=3, kind="audit"), {"kind": "audit", "model": {"spec": spec}}))
    assert pairs["architecture"] == "onnx (from suspect.onnx); layers chosen: last_conv = features/Conv_1"
    assert pairs["input shape"] == "1×28×28"
    plain = dict(summary_pairs(SimpleNamespace(id=1, kind="audit"), {"model": {"spec": {"arch": "paper-cnn"}}}))
    assert plain["architecture"] == "paper-cnn"
    demo = dict(summary_pairs(SimpleNamespace(id=1, kind="demo"), {"kind": "demo"}))
    assert demo["architecture"] == "paper-cnn (Fashion-MNIST demo)"


def test_the_model_download_carries_the_architecture_file(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("finetuned.safetensors", "finetuned.json", "finetuned.source.onnx", "student.source.onnx"):
        (models / name).write_bytes(name.encode())
    with zipfile.ZipFile(io.BytesIO(model_zip(tmp_path))) as z:
        assert sorted(z.namelist()) == ["finetuned.json", "finetuned.safetensors", "finetuned.source.onnx"]
        assert z.read("finetuned.source.onnx") == b"finetuned.source.onnx"


def test_defenses_page_says_which_methods_cannot_run_on_a_model_without_a_conv(kdaudit_home, monkeypatch):
    from app.uploads import ModelCheck
    from kdcore.models.layers import NO_CONV
    from kdcore.models.spec import ModelSpec
    from tests.app.conftest import open_page

    at = open_page("defenses", job=1)  # the digits audit: a CNN, nothing to warn about
    assert not at.exception and not any(NO_CONV in w.value for w in at.warning)
    problem = f"TinyViT has no nn.Conv2d layer: {NO_CONV}"
    layers = {"conv": [], "linear": ["head"], "last_conv": None, "conv_activation": None, "penultimate": "head"}
    layers["problems"] = {"last_conv": problem, "conv_activation": problem}
    seen = []

    def fake_check(path, spec_json):
        seen.append((path, json.loads(spec_json)["arch"]))
        return ModelCheck(ModelSpec("paper-cnn", 10), 5, 10, layers)

    monkeypatch.setattr("app.defenses.check_model", fake_check)
    # the audit's own view (written at its end) carries the layer report: no sandboxed load
    monkeypatch.setattr("app.defenses.read_view", lambda run_dir: SimpleNamespace(layers=layers))
    at = open_page("defenses", job=1)
    assert not at.exception
    assert [w.value for w in at.warning].count(problem) == 1  # once, though two roles share it
    assert not seen
    # a run without a view (older runs): the same sandboxed check as New audit's
    monkeypatch.setattr("app.defenses.read_view", lambda run_dir: None)
    at = open_page("defenses", job=1)
    assert not at.exception
    assert [w.value for w in at.warning].count(problem) == 1
    assert seen and seen[0][1] == "paper-cnn" and seen[0][0].endswith("teacher.safetensors")


@pytest.fixture(scope="module")
def onnx_home(tmp_path_factory, digits_files):
    """A data directory with job 1 = a finished audit of the digits teacher exported to ONNX (a model that is
    no registry name: its architecture is the graph), with train, test and trigger."""
    import os

    import torch

    from kdcore.jobs.store import JobStore
    from kdcore.jobs.worker import run_job
    from kdcore.models.loading import load_model
    from tests.conftest import audit_config

    home = tmp_path_factory.mktemp("onnx-home")
    teacher, spec = load_model(digits_files["model"], None, "cpu")
    path = home / "suspect.onnx"
    torch.onnx.export(teacher.eval(), torch.zeros(1, *spec.input_shape), path, dynamo=False)
    cfg = audit_config(digits_files, kd_epochs=2, ft_epochs=1, model=str(path), mean=[0.3], std=[0.4])
    store = JobStore(home)
    store.submit("audit", cfg, label="onnx audit")
    job = store.claim("cpu", os.getpid())
    assert run_job(store, job, "cpu") == "succeeded", store.get(job.id).error
    return home


@pytest.fixture()
def onnx_env(onnx_home, monkeypatch):
    monkeypatch.setenv("KDAUDIT_HOME", str(onnx_home))
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    return onnx_home


@pytest.mark.parametrize("page", ["results", "candidates", "explain", "defenses"])
def test_every_page_works_on_an_audit_of_an_onnx_model(onnx_env, page):
    from tests.app.conftest import open_page

    at = open_page(page, job=1, timeout=240)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    if page == "explain":
        conv = at.selectbox(key="explain_layer")
        assert conv.options and conv.value == conv.options[-1]  # the graph's last conv, by its converted name
        assert len(at.image) == 20 + 4  # Grad-CAM grid, activation maps
        assert sum(m.value.startswith("<svg") for m in at.markdown) == 2 * 3  # ℓp histograms: models × norms
    if page == "results":
        assert sum('class="kd-cm"' in h.proto.body for h in at.get("html")) >= 2  # confusion tables
