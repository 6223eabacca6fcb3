"""No section of the New-audit form in error can start a job without its input (issue 22): the trigger
section showed 🚫 while Start the audit stayed enabled, and the job ran with no trigger. For each kind
of section error: Start is disabled, the reason names the section, and no job is queued."""

from __future__ import annotations

import numpy as np
import pytest

from kdcore.jobs.store import JobStore
from tests.app.conftest import open_page
from tests.app.test_new_audit_forms import _model_bytes, _up, _zip
from tests.app.test_trigger_form import png


@pytest.fixture()
def ready(empty_home, digits, tmp_path):
    """New audit with the 8×8 digits model and an unlabelled zip: ready to start."""
    at = open_page("new_audit")
    at = _up(at, "model_file", "m.safetensors", _model_bytes(tmp_path))
    at = _up(at, "unlabeled_files", "u.zip", _zip(digits, None))
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not at.button(key="submit_audit").disabled
    return at


def _blocked(at, home, reason: str, words: str) -> None:
    """Start is disabled (AppTest, like a browser, cannot click it) with "<reason> …<words>…" under it
    (reason: "Fix the <section> section:"), and nothing is queued."""
    assert not at.exception, at.exception
    assert at.button(key="submit_audit").disabled
    reasons = " ".join(c.value for c in at.caption if "🚫" in c.value)
    assert reason in reasons and words in reasons.split(reason)[1], reasons
    assert not JobStore(home).list()


def _patch(at, data: bytes | None):
    at.toggle(key="know_trigger").set_value(True).run(timeout=60)
    at.selectbox(key="trigger_kind").set_value("patch").run(timeout=60)
    return at if data is None else _up(at, "trigger_patch_image", "pattern.png", data)


@pytest.mark.parametrize(
    ("make_error", "words"),
    [
        (lambda at: _patch(at, None), "Give the trigger's file"),
        (lambda at: _patch(at, png(np.full((10, 10), 255), "L")), "does not fit"),  # 10×10 on an 8×8 input
        (lambda at: _patch(at, b"\x89PNG not really"), "pattern.png"),
    ],
    ids=["no-file", "does-not-fit", "unreadable-pattern"],
)
def test_a_trigger_in_error_blocks_the_start(ready, empty_home, make_error, words):
    _blocked(make_error(ready), empty_home, "Fix the trigger section:", words)


def test_a_model_that_cannot_be_read_blocks_the_start(empty_home, digits):
    at = _up(open_page("new_audit"), "unlabeled_files", "u.zip", _zip(digits, None))
    at = _up(at, "model_file", "bad.safetensors", b"\xff" * 64)
    _blocked(at, empty_home, "Fix the model section:", "bad.safetensors")


def test_model_fields_that_make_no_spec_block_the_start(ready, empty_home):
    at = ready.text_input(key="input_shape").set_value("1,8,x").run(timeout=60)
    _blocked(at, empty_home, "Fix the model section:", "Input shape must be three integers")


def test_a_model_that_fails_its_check_blocks_the_start(ready, empty_home):
    at = ready.text_input(key="input_shape").set_value("1,28,28").run(timeout=90)  # the weights are for 8×8
    assert not any(s.value.startswith("Model loads") for s in at.success)
    _blocked(at, empty_home, "Fix the model section:", "do not fit paper-cnn")


def test_an_upload_of_a_zip_and_images_together_blocks_the_start(ready, empty_home, digits):
    files = [("u.zip", _zip(digits, None), "application/zip"), ("a.png", png(np.zeros((8, 8)), "L"), "image/png")]
    at = ready.file_uploader(key="unlabeled_files").set_value(files).run(timeout=60)
    _blocked(at, empty_home, "Fix the unlabelled images section:", "not both")


@pytest.mark.parametrize(
    ("slot", "section"),
    [("unlabeled_files", "unlabelled images"), ("train_file", "training set"), ("test_file", "test set")],
)
def test_an_image_set_that_cannot_be_read_blocks_the_start(ready, empty_home, slot, section):
    at = _up(ready, slot, "broken.zip", b"PK\x03\x04 not a zip")
    _blocked(at, empty_home, f"Fix the {section} section:", "broken.zip")


def test_image_sets_that_disagree_block_the_start(ready, empty_home, digits):
    at = _up(ready, "test_file", "unlabelled.zip", _zip(digits, None))
    _blocked(at, empty_home, "Fix the images section:", "The test set is not a labelled set")


def test_a_hyperparameter_the_job_would_refuse_blocks_the_start(ready, empty_home):
    at = ready.number_input(key="kd_lr").set_value(0.0).run(timeout=60)
    _blocked(at, empty_home, "Fix the hyperparameters section:", "lr > 0; got epochs=")
    assert not any("DistillConfig(" in x.value for x in [*at.error, *at.caption])  # the values, not a repr


def test_the_start_is_enabled_again_once_the_section_is_fixed_and_the_job_has_the_trigger(ready, empty_home):
    at = _patch(ready, None)
    assert at.button(key="submit_audit").disabled
    at = _up(at, "trigger_patch_image", "pattern.png", png(np.full((2, 2), 255), "L"))
    assert not at.error and not at.button(key="submit_audit").disabled, [e.value for e in at.error]
    at.button(key="submit_audit").click().run(timeout=60)
    assert not at.exception, at.exception
    (job,) = JobStore(empty_home).list()
    assert job.config["trigger"]["kind"] == "patch" and job.config["trigger"]["image"].endswith("pattern.png")


def test_a_triggered_set_without_the_test_set_blocks_the_start_until_it_is_given(ready, empty_home, digits):
    """Each section is right alone, but the store refuses the two together: the store's own check says so."""
    ready.toggle(key="know_trigger").set_value(True).run(timeout=60)
    ready.selectbox(key="trigger_kind").set_value("triggered").run(timeout=60)
    at = _up(ready, "trigger_triggered_zip", "triggered.zip", _zip(digits, None))
    _blocked(at, empty_home, "These inputs do not go together:", "Labelled test set")
    at = _up(at, "test_file", "test.zip", _zip(digits, tuple(range(10)), n=60))
    assert not at.error and not at.button(key="submit_audit").disabled, [e.value for e in at.error]
    at.button(key="submit_audit").click().run(timeout=60)
    (job,) = JobStore(empty_home).list()
    assert job.config["trigger"]["kind"] == "triggered" and job.config["test"].endswith("test.zip")
