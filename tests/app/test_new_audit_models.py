"""The New-audit page with models of any architecture (issue 9): the picker (built-ins, plugins, timm,
torchvision, a Python file only on a trusted server), files that carry their own architecture, the
model check's layer report, and the layer select ending up in the submitted config."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import zipfile

import pytest
import safetensors.torch
import torch

from app.model_form import PY_FILE, TIMM, UNTRUSTED_NOTE
from kdcore.jobs.store import validate_config
from kdcore.models.layers import layer_report
from kdcore.models.loading import save_model
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.runs.configs import AuditConfig
from tests.app.conftest import open_page

MLP_SOURCE = b'''
from torch import nn


class TinyMLP(nn.Module):
    """No conv at all, like a ViT's head: Grad-CAM cannot run, activation clustering can."""

    def __init__(self, num_classes, input_shape, hidden=16):
        super().__init__()
        c, h, w = input_shape
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
'''


def _png_zip() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(3):
            img = io.BytesIO()
            Image.new("L", (28, 28), color=40 * i).save(img, format="PNG")
            z.writestr(f"clean/{i}.png", img.getvalue())
    return buf.getvalue()


def _upload(at, key: str, name: str, data: bytes):
    return at.file_uploader(key=key).set_value([(name, data, "application/octet-stream")]).run(timeout=90)


def _submit(at, submitted: list[dict]) -> dict:
    at.file_uploader(key="unlabeled_files").set_value([("u.zip", _png_zip(), "application/zip")]).run(timeout=60)
    assert not at.button(key="submit_audit").disabled
    at.button(key="submit_audit").click().run(timeout=60)
    assert not at.exception
    assert submitted, [e.value for e in at.error]
    return submitted[-1]


def _texts(at) -> str:
    return " ".join(x.value for kind in (at.markdown, at.caption, at.success, at.warning, at.info) for x in kind)


def test_a_kdcore_model_shows_its_layers_and_the_layer_select_reaches_the_config(empty_home, tmp_path, submitted):
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28), class_names=tuple("abcdefghij"))
    model = build_model(spec)
    data = save_model(model, spec, tmp_path / "cnn.safetensors").read_bytes()
    at = open_page("new_audit")
    _upload(at, "model_file", "cnn.safetensors", data)
    assert not at.exception and not at.error, [e.value for e in at.error]
    success = " ".join(s.value for s in at.success)
    assert "Model loads: paper-cnn" in success and "a, b, c" in success and "(1, 28, 28)" in success
    report = layer_report(model, spec)
    assert "Layers found for Explain / defenses" in _texts(at)
    conv = at.selectbox(key="layer_last_conv")
    assert list(conv.options) == report["conv"] and conv.value == report["last_conv"]
    assert at.selectbox(key="layer_penultimate").value == report["penultimate"]
    conv.set_value(report["conv"][0]).run(timeout=60)
    cfg = _submit(at, submitted)
    assert cfg["layers"] == [f"last_conv={report['conv'][0]}"]
    assert cfg["arch"] == "paper-cnn" and cfg["num_classes"] == 10 and "arch_file" not in cfg
    assert validate_config("audit", cfg)["layers"] == [f"last_conv={report['conv'][0]}"]


def test_untrusted_server_offers_no_python_file_and_says_why(empty_home, tmp_path):
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28))
    at = open_page("new_audit")
    _upload(
        at, "model_file", "w.safetensors", save_model(build_model(spec), spec, tmp_path / "w.safetensors").read_bytes()
    )
    assert PY_FILE not in at.selectbox(key="arch").options
    assert TIMM in at.selectbox(key="arch").options and "paper-cnn" in at.selectbox(key="arch").options
    assert UNTRUSTED_NOTE in _texts(at) and "KDAUDIT_TRUST_CODE=1" in UNTRUSTED_NOTE


def test_trusted_server_takes_a_python_file_class_and_kwargs(empty_home, tmp_path, submitted, monkeypatch):
    monkeypatch.setenv("KDAUDIT_TRUST_CODE", "1")
    spec_file = tmp_path / "mlp.py"
    spec_file.write_bytes(MLP_SOURCE)
    module_spec = importlib.util.spec_from_file_location("mlp_for_test", spec_file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    weights = module.TinyMLP(10, (1, 28, 28), hidden=8).state_dict()
    at = open_page("new_audit")
    _upload(at, "model_file", "mlp.safetensors", safetensors.torch.save(weights))
    assert UNTRUSTED_NOTE not in _texts(at)
    at.selectbox(key="arch").set_value(PY_FILE).run(timeout=60)
    _upload(at, "arch_source", "mlp.py", MLP_SOURCE)
    at.text_input(key="arch_class").set_value("TinyMLP").run(timeout=60)
    at.text_input(key="arch_kwargs").set_value('{"hidden": 8}').run(timeout=90)
    at.text_input(key="input_shape").set_value("1,28,28").run(timeout=90)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Model loads: file:TinyMLP" in s.value for s in at.success)
    warnings = " ".join(w.value for w in at.warning)
    assert "no nn.Conv2d layer" in warnings and "Grad-CAM" in warnings and "activation clustering" in warnings
    assert at.selectbox(key="layer_penultimate").value == "head"
    cfg = _submit(at, submitted)
    path, cls = cfg["arch_file"].rsplit(":", 1)
    assert cls == "TinyMLP" and cfg["arch_kwargs"] == {"hidden": 8} and "arch" not in cfg
    digest = hashlib.sha256(MLP_SOURCE).hexdigest()
    assert digest in path and cfg["arch_file_sha256"] == digest  # the file is named by its full SHA-256
    assert open(path, "rb").read() == MLP_SOURCE
    resolved = validate_config("audit", cfg)
    assert resolved["arch_file"] == cfg["arch_file"] and resolved["arch_file_sha256"] == digest
    spec = AuditConfig(**{k: v for k, v in resolved.items() if k != "kd"}).model_spec()
    assert spec.arch == "file:TinyMLP" and spec.extra == {"hidden": 8} and spec.source_sha256 == digest


def test_an_invalid_kwargs_json_is_an_error_in_words(empty_home, tmp_path, monkeypatch):
    monkeypatch.setenv("KDAUDIT_TRUST_CODE", "1")
    at = open_page("new_audit")
    _upload(at, "model_file", "m.safetensors", safetensors.torch.save({"w": torch.zeros(2)}))
    at.selectbox(key="arch").set_value(PY_FILE).run(timeout=60)
    _upload(at, "arch_source", "mlp.py", MLP_SOURCE)
    at.text_input(key="arch_class").set_value("TinyMLP").run(timeout=60)
    at.text_input(key="arch_kwargs").set_value("{hidden: 8").run(timeout=60)
    assert not at.exception
    assert any("JSON object" in e.value for e in at.error)
    assert at.button(key="submit_audit").disabled


def test_a_timm_name_is_checked_and_submitted(empty_home, tmp_path, submitted):
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=4, in_chans=3)
    at = open_page("new_audit")
    _upload(at, "model_file", "r.safetensors", safetensors.torch.save(model.state_dict()))
    at.selectbox(key="arch").set_value(TIMM).run(timeout=60)
    at.text_input(key="timm_name").set_value("resnet10t").run(timeout=60)
    at.number_input(key="num_classes").set_value(4).run(timeout=60)
    at.text_input(key="input_shape").set_value("3,32,32").run(timeout=120)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Model loads: timm:resnet10t" in s.value for s in at.success)
    assert at.selectbox(key="layer_last_conv").value
    at.text_input(key="timm_name").set_value("resnet10tt").run(timeout=60)  # a typo: refused in words
    assert not at.exception and any("resnet10t" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="submit_audit").disabled
    at.text_input(key="timm_name").set_value("resnet10t").run(timeout=60)
    cfg = _submit(at, submitted)  # the submit leaves for the Jobs page
    assert cfg["arch"] == "timm:resnet10t" and cfg["num_classes"] == 4 and cfg["input_shape"] == (3, 32, 32)


def test_an_onnx_file_brings_its_architecture(empty_home, tmp_path, submitted):
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28))
    torch.onnx.export(build_model(spec).eval(), torch.zeros(1, 1, 28, 28), tmp_path / "m.onnx", dynamo=False)
    at = open_page("new_audit")
    _upload(at, "model_file", "m.onnx", (tmp_path / "m.onnx").read_bytes())
    assert not at.exception and not at.error, [e.value for e in at.error]
    texts = _texts(at)
    assert "from the file (ONNX graph)" in texts and "Layers found for Explain / defenses" in texts
    assert not any(s.key == "arch" for s in at.selectbox)  # no picker: the graph is the architecture
    assert any("10 output classes" in s.value and "(1, 28, 28)" in s.value for s in at.success)
    cfg = _submit(at, submitted)
    assert "arch" not in cfg and "num_classes" not in cfg and cfg["model"].endswith("m.onnx")


def test_a_hugging_face_style_zip_brings_its_architecture(empty_home, tmp_path, submitted):
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("config.json", json.dumps({"architecture": "resnet10t", "num_classes": 3}))
        z.writestr("model.safetensors", safetensors.torch.save(model.state_dict()))
    at = open_page("new_audit")
    _upload(at, "model_file", "hf.zip", buf.getvalue())
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "from the file (config.json)" in _texts(at)
    assert any("3 output classes" in s.value for s in at.success)
    cfg = _submit(at, submitted)
    assert "arch" not in cfg and cfg["model"].endswith("hf.zip")


def test_the_model_check_answers_layers_through_the_sandbox_as_plain_values(tmp_path, monkeypatch):
    from kdcore import sandbox

    spec = ModelSpec("resnet18-small", 10, (3, 32, 32))
    model = build_model(spec)
    path = save_model(model, spec, tmp_path / "r.safetensors")
    got, n, report = sandbox.check_model(path, None)
    assert got == spec and n == sum(p.numel() for p in model.parameters())
    assert report == layer_report(model, spec) and report["last_conv"] == "layer4.1.conv2"
    assert report["conv_activation"] == "layer4.1.bn2" and report["problems"] == {}


def test_the_sandbox_child_runs_an_architecture_file_only_when_the_parent_trusts(tmp_path, monkeypatch):
    from kdcore import sandbox
    from kdcore.errors import ConfigError, ModelLoadError
    from kdcore.io import file_sha256

    src = tmp_path / "mlp.py"
    src.write_bytes(MLP_SOURCE)
    spec = ModelSpec("file:TinyMLP", 10, (1, 8, 8), source=str(src), source_sha256=file_sha256(src))
    path = tmp_path / "mlp.safetensors"
    weights = {
        "body.1.weight": torch.zeros(16, 64),
        "body.1.bias": torch.zeros(16),
        "head.weight": torch.zeros(10, 16),
        "head.bias": torch.zeros(10),
    }
    safetensors.torch.save_file(weights, path)
    monkeypatch.delenv("KDAUDIT_TRUST_CODE", raising=False)
    with pytest.raises((ConfigError, ModelLoadError), match="--trust-code"):
        sandbox.check_model(path, spec)
    monkeypatch.setenv("KDAUDIT_TRUST_CODE", "1")
    got, n, report = sandbox.check_model(path, spec)
    assert got.arch == "file:TinyMLP" and n == 16 * 64 + 16 + 10 * 16 + 10
    assert report["last_conv"] is None and "no nn.Conv2d" in report["problems"]["last_conv"]
    assert report["penultimate"] == "head"


def test_a_broken_layer_report_from_a_child_is_refused():
    from kdcore.errors import ModelLoadError
    from kdcore.sandbox.model_check import answer_checked as model_check

    spec = ModelSpec("paper-cnn", 10)
    good = {
        "conv": ["a"],
        "linear": ["b"],
        "last_conv": "a",
        "conv_activation": "a",
        "penultimate": "b",
        "problems": {},
    }
    assert model_check((spec, 5, good)) == (spec, 5, good)
    for bad in ({**good, "conv": [1]}, {**good, "problems": {"x": 2}}, {**good, "last_conv": ["a"]}, []):
        with pytest.raises(ModelLoadError, match="answer is broken"):
            model_check((spec, 5, bad))
    with pytest.raises(ModelLoadError):
        model_check((spec, 5))


def test_another_upload_starts_the_form_again_from_its_own_spec(empty_home, tmp_path):
    small, big = ModelSpec("paper-cnn", 10, (1, 8, 8), (0.3,), (0.4,)), ModelSpec("paper-cnn", 4, (1, 28, 28))
    at = open_page("new_audit")
    _upload(
        at,
        "model_file",
        "small.safetensors",
        save_model(build_model(small), small, tmp_path / "s.safetensors").read_bytes(),
    )
    assert at.text_input(key="input_shape").value == "1,8,8" and at.text_input(key="mean").value == "0.3"
    _upload(
        at, "model_file", "big.safetensors", save_model(build_model(big), big, tmp_path / "b.safetensors").read_bytes()
    )
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.text_input(key="input_shape").value == "1,28,28" and at.number_input(key="num_classes").value == 4
    assert any("4 output classes" in s.value for s in at.success)


def test_an_onnx_file_with_a_symbolic_image_size_asks_for_the_input_shape(empty_home, tmp_path, submitted):
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28))
    path = tmp_path / "dyn.onnx"
    axes = {"x": {0: "batch", 2: "height", 3: "width"}}
    model = build_model(spec).eval()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), path, dynamo=False, input_names=["x"], dynamic_axes=axes)
    at = open_page("new_audit")
    _upload(at, "model_file", "dyn.onnx", path.read_bytes())
    assert not at.exception and any("symbolic" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="submit_audit").disabled
    at.text_input(key="graph_input_shape").set_value("1,28,28").run(timeout=90)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("10 output classes" in s.value and "(1, 28, 28)" in s.value for s in at.success)
    cfg = _submit(at, submitted)
    assert cfg["input_shape"] == (1, 28, 28) and "arch" not in cfg


@pytest.mark.parametrize("trust", [False, True])
def test_a_torch_export_archive_loads_and_shows_its_shape_and_classes(
    empty_home, tmp_path, submitted, monkeypatch, trust
):
    if trust:
        monkeypatch.setenv("KDAUDIT_TRUST_CODE", "1")
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28))
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(build_model(spec).eval(), (torch.zeros(2, 1, 28, 28),)), path)
    at = open_page("new_audit")
    _upload(at, "model_file", "m.pt2", path.read_bytes())
    assert not at.exception and not at.error, [e.value for e in at.error]  # trusted or not: it loads
    assert "from the file (torch.export archive)" in _texts(at)
    assert not any(s.key == "arch" for s in at.selectbox)  # no picker: the program is the architecture
    assert any("10 output classes" in s.value and "(1, 28, 28)" in s.value for s in at.success)
    cfg = _submit(at, submitted)
    assert "arch" not in cfg and "num_classes" not in cfg and cfg["model"].endswith("m.pt2")
