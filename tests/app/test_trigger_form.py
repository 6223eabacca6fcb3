"""New audit's trigger section for file triggers (patch, blend, triggered test set, recovered): uploads
become paths in the trigger dict, a stamped preview is shown, bad files are one st.error line; and the
blind-audit checkbox."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore.models.loading import save_model
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.triggers import Patch, Trigger
from kdcore.triggers.recovered import FILE, recovered_tensors, write_recovered
from tests.app.conftest import open_page
from tests.app.test_new_audit_models import _png_zip, _submit, _upload


def png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def page_with_model(tmp_path, monkeypatch):
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path))
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28), class_names=tuple("abcdefghij"))
    data = save_model(build_model(spec), spec, tmp_path / "cnn.safetensors").read_bytes()
    at = open_page("new_audit")
    _upload(at, "model_file", "cnn.safetensors", data)
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.toggle(key="know_trigger").set_value(True).run(timeout=60)
    return at


def test_patch_upload_shows_a_preview_and_reaches_the_config(page_with_model, submitted):
    at = page_with_model
    at.selectbox(key="trigger_kind").set_value("patch").run(timeout=60)
    assert not at.exception and not at.error
    assert any("Give the trigger's file" in c.value for c in at.caption)  # nothing to preview yet
    at.number_input(key="trigger_target").set_value(7).run(timeout=60)
    _upload(at, "trigger_patch_image", "white3.png", png(np.full((3, 3), 255), "L"))
    assert not at.exception and not at.error, [e.value for e in at.error]
    captions = [c for img in at.image for c in img.captions]
    assert any(c.startswith("clean (a grey 1×28×28") for c in captions), captions
    assert "+ trigger → class 7" in captions
    at.slider(key="trigger_patch_alpha").set_value(0.2).run(timeout=60)
    cfg = _submit(at, submitted)
    t = cfg["trigger"]
    assert t["kind"] == "patch" and t["target"] == 7 and t["alpha"] == 0.2 and len(t["image_sha256"]) == 64
    assert "/uploads/" in t["image"] and t["location"] == "bottom-right"
    trig = Trigger.from_dict(t)
    assert isinstance(trig, Patch)
    x = np.full((1, 1, 28, 28), 100, np.uint8)
    out = trig.stamp(torch.from_numpy(x)).numpy()
    assert out[0, 0, 26, 26] == round(0.8 * 100 + 0.2 * 255) and out[0, 0, 0, 0] == 100  # 3×3 at 1 px margin


def test_preview_uses_the_first_unlabelled_image(page_with_model):
    at = page_with_model
    at.file_uploader(key="unlabeled_files").set_value([("u.zip", _png_zip(), "application/zip")]).run(timeout=60)
    at.selectbox(key="trigger_kind").set_value("blend").run(timeout=60)
    _upload(at, "trigger_blend_image", "logo.png", png(np.random.default_rng(0).integers(0, 256, (8, 8, 3)), "RGB"))
    assert not at.exception and not at.error, [e.value for e in at.error]
    captions = [c for img in at.image for c in img.captions]
    assert "clean (the first unlabelled image)" in captions


def test_bad_png_is_one_error_line(page_with_model):
    at = page_with_model
    at.selectbox(key="trigger_kind").set_value("patch").run(timeout=60)
    _upload(at, "trigger_patch_image", "broken.png", b"\x89PNG not really")
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value and "broken.png" in at.error[0].value
    assert not at.image


def test_patch_too_big_for_the_input_is_an_error(page_with_model):
    at = page_with_model
    at.selectbox(key="trigger_kind").set_value("patch").run(timeout=60)
    _upload(at, "trigger_patch_image", "big.png", png(np.zeros((40, 40)), "L"))
    assert not at.exception
    assert len(at.error) == 1 and "does not fit" in at.error[0].value


def _labelled_zip() -> bytes:
    """A labelled 28×28 test set with the model's classes a…j, one image each."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, name in enumerate("abcdefghij"):
            z.writestr(f"test/{name}/{i}.png", png(np.full((28, 28), 20 * i), "L"))
    return buf.getvalue()


def test_triggered_zip_and_blind_checkbox(page_with_model, submitted):
    at = page_with_model
    at.selectbox(key="trigger_kind").set_value("triggered").run(timeout=60)
    _upload(at, "trigger_triggered_zip", "trig.zip", _png_zip())
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("brings its own images" in c.value for c in at.caption)
    _upload(at, "test_file", "test.zip", _labelled_zip())  # a triggered set is measured next to the test set
    at.checkbox(key="blind").check().run(timeout=60)
    cfg = _submit(at, submitted)
    assert cfg["trigger"]["kind"] == "triggered" and cfg["trigger"]["path"].endswith("trig.zip")
    assert cfg["blind"] is True


def test_recovered_trigger_from_a_neural_cleanse_run(page_with_model, submitted, tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    tensors = recovered_tensors(
        torch.rand(10, 28, 28, generator=g), 255 * torch.rand(10, 1, 28, 28, generator=g), list(range(10)),
        torch.arange(10) == 2, torch.linspace(0, 1, 10),
    )  # fmt: skip
    write_recovered(tmp_path / "nc" / FILE, tensors)
    monkeypatch.setattr("app.trigger_form.recovered_runs", lambda: [(5, "neural-cleanse on #1", str(tmp_path / "nc"))])
    at = page_with_model
    at.selectbox(key="trigger_kind").set_value("recovered").run(timeout=60)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="trigger_rec_run").value == str(tmp_path / "nc")
    assert "+ trigger → class 2" in [c for img in at.image for c in img.captions]  # the flagged class by default
    cfg = _submit(at, submitted)
    assert cfg["trigger"]["kind"] == "recovered" and cfg["trigger"]["target"] == 2
    assert len(cfg["trigger"]["file_sha256"]) == 64
