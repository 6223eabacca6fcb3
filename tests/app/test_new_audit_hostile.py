"""The New-audit page with hostile model uploads (issue 11): the Streamlit script run survives and
shows st.error, because the upload is read only in `kdcore.sandbox`'s child processes."""

from __future__ import annotations

import pytest

from kdcore import sandbox
from kdcore.models.loading import save_model
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from tests.app.conftest import open_page
from tests.hostile.corpus import deep_tuple_pt


@pytest.fixture()
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path))
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    return tmp_path


def upload(name: str, data: bytes):
    at = open_page("new_audit")
    assert not at.exception
    at.file_uploader(key="model_file").set_value([(name, data, "application/octet-stream")]).run(timeout=60)
    return at


def test_a_tuple_nested_a_million_deep_shows_an_error_and_the_server_survives(empty_home, tmp_path):
    data = deep_tuple_pt(tmp_path).read_bytes()
    assert len(data) < 1_100_000  # a 1 MB upload
    at = upload("deep.pt", data)
    assert not at.exception  # no traceback: the script run finished
    errors = [e.value for e in at.error]
    assert any("deep.pt" in e for e in errors), errors
    assert at.button(key="submit_audit").disabled
    at.run(timeout=60)  # the same session keeps working after the refusal
    assert not at.exception


def test_a_zero_byte_safetensors_shows_an_error_not_a_traceback(empty_home):
    at = upload("empty.safetensors", b"")
    assert not at.exception
    assert any("empty" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="submit_audit").disabled


def test_a_malformed_safetensors_shows_an_error_not_a_traceback(empty_home):
    at = upload("bad.safetensors", b"\xff" * 64)
    assert not at.exception
    assert any("bad.safetensors" in e.value for e in at.error), [e.value for e in at.error]


def test_a_good_model_is_checked_once_and_a_rerun_reads_the_cache(empty_home, tmp_path, monkeypatch):
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28))
    data = save_model(build_model(spec), spec, tmp_path / "good.safetensors").read_bytes()
    children: list[str] = []  # the sandbox's child runs: each reads the upload again
    real_run = sandbox.run

    def counted(target, *args, **kwargs):
        children.append(target)
        return real_run(target, *args, **kwargs)

    monkeypatch.setattr(sandbox, "run", counted)
    at = upload("good.safetensors", data)
    assert not at.exception and not at.error
    assert any("Model loads: paper-cnn" in s.value for s in at.success)
    assert children, "the upload was never read in the sandbox"
    checked = len(children)
    at.run(timeout=60)
    assert any("Model loads: paper-cnn" in s.value for s in at.success)
    assert children[checked:] == []  # check_model and stored_spec are cached by content and spec
