"""Results and report views on audits of models that are not registry names (ONNX graphs, Python
classes): the architecture line names the file and the chosen layers, and the model download carries
the file the architecture is defined by."""

from __future__ import annotations

import io
import json
import zipfile
from types import SimpleNamespace

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
    at = open_page("defenses", job=1)
    assert not at.exception
    assert [w.value for w in at.warning].count(problem) == 1  # once, though two roles share it
    assert seen and seen[0][1] == "paper-cnn" and seen[0][0].endswith("teacher.safetensors")
