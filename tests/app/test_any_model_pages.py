"""Results and report views on audits of models that are not registry names (ONNX graphs, Python
classes): the architecture line names the file and the chosen layers, and the model download carries
the file the architecture is defined by."""

from __future__ import annotations

import io
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
