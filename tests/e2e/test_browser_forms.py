"""The New-audit form in a real browser (issue 14): a wrong zip is flagged before submit, a failed job
reopens in the form, and no CLI flag name reaches a page (a failing model upload, a failed job); a
section in error (the trigger's) cannot start a job without its input (issue 22)."""

from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path

import torch
from PIL import Image

from kdcore.jobs.store import JobStore
from kdcore.models.loading import save_model
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from tests.e2e.conftest import SHOTS, choose

SPEC = ModelSpec("paper-cnn", 10, (1, 8, 8), (0.3,), (0.4,))
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def _model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_model(build_model(SPEC), SPEC, tmp_path / "digits-model.safetensors")


def _flat_zip(digits_files: dict, dest: Path) -> Path:
    """The digits' unlabelled PNGs, all at the top level of the zip: an unlabelled set."""
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(Path(digits_files["unlabeled"]).rglob("*.png"))[:60]:
            z.write(p, p.name)
    return dest


def _upload(page, key: str, path: Path) -> None:
    page.locator(f".st-key-{key} input[type=file]").set_input_files(str(path))
    page.locator(f".st-key-{key}").get_by_text(path.name).wait_for(timeout=60_000)
    page.wait_for_timeout(500)


def _submit_button(page):
    from playwright.sync_api import expect  # as the page fixture: imported only when the browser tests run

    return expect(page.get_by_role("button", name="Start the audit"))


def _flags_on(page) -> list[str]:
    return FLAG.findall(page.locator("body").inner_text())


def test_a_wrong_zip_in_the_test_slot_is_flagged_before_submit(server, page, digits_files, tmp_path):
    page.goto(f"{server['url']}/new_audit")
    page.locator(".st-key-model_file input[type=file]").set_input_files(str(_model(tmp_path)))
    page.get_by_text("Model loads").wait_for(timeout=120_000)
    _upload(page, "unlabeled_files", _flat_zip(digits_files, tmp_path / "unlabeled.zip"))
    page.get_by_text("Found in unlabeled.zip").wait_for(timeout=60_000)
    _submit_button(page).to_be_enabled(timeout=60_000)
    _upload(page, "test_file", _flat_zip(digits_files, tmp_path / "wrong-test.zip"))
    flagged = page.get_by_text("The test set is not a labelled set").first  # also in the reason under Start
    flagged.wait_for(timeout=60_000)
    _submit_button(page).to_be_disabled(timeout=60_000)  # waits for the rerun to end
    flagged.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "new_audit_wrong_zip.png", full_page=True)
    assert not JobStore(server["data"]).list()  # nothing was queued


def test_a_failed_job_reopens_in_the_form_and_no_flag_is_shown(server, page, digits_files, tmp_path):
    url, data = server["url"], server["data"]
    model = _model(tmp_path)
    cfg = {  # the model is 8×8: loading it as 28×28 fails at once, with a message written for the CLI
        "model": str(model),
        "arch": "paper-cnn",
        "num_classes": 10,
        "input_shape": [1, 28, 28],
        "unlabeled": str(_flat_zip(digits_files, tmp_path / "unlabeled.zip")),
        "test": str(digits_files["test"]),
        "device": "cpu",
        "seed": 3,
    }
    store = JobStore(data)
    job = store.submit("audit", cfg, label="wrong input shape")
    end = time.monotonic() + 180
    while not store.get(job.id).terminal and time.monotonic() < end:
        time.sleep(1)
    failed = store.get(job.id)
    assert failed.state == "failed" and "--arch" in failed.error, failed.error
    page.goto(f"{url}/jobs?job={job.id}")
    page.get_by_text("Reason:").first.wait_for(timeout=60_000)
    page.get_by_text("Reopen in the form").first.wait_for()
    assert not _flags_on(page), _flags_on(page)
    page.screenshot(path=SHOTS / "jobs_failed.png", full_page=True)
    page.get_by_text("Reopen in the form").first.click()
    page.wait_for_url(f"**/new_audit?from={job.id}")
    page.get_by_text(f"Reopened job #{job.id}").wait_for(timeout=60_000)
    from playwright.sync_api import expect

    expect(page.locator(".st-key-audit_label input")).to_have_value("wrong input shape")
    expect(page.locator(".st-key-input_shape input")).to_have_value("1,28,28")
    page.get_by_text("Use the test set from job").wait_for()
    page.get_by_text("Use the test set from job").scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "new_audit_reopened.png", full_page=True)
    box = page.locator(".st-key-input_shape input")  # the fix: the model's real input shape
    box.fill("1,8,8")
    box.press("Enter")
    page.get_by_text("Model loads").wait_for(timeout=120_000)
    _submit_button(page).to_be_enabled(timeout=60_000)


def test_a_failing_model_upload_names_fields_not_flags(server, page, tmp_path):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    page.goto(f"{server['url']}/new_audit")
    page.locator(".st-key-model_file input[type=file]").set_input_files(str(path))
    page.get_by_text("it looks like tv:resnet18").first.wait_for(timeout=120_000)  # also under Start
    page.get_by_text("The full lists").click()
    page.get_by_text("layer4.1.bn2.running_var").wait_for()
    page.get_by_text("it looks like tv:resnet18").first.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "new_audit_model_mismatch.png", full_page=True)
    assert not _flags_on(page), _flags_on(page)


def test_a_trigger_section_in_error_cannot_start_an_audit_without_its_trigger(server, page, digits_files, tmp_path):
    """Issue 22: with the trigger section showing 🚫, Start the audit stayed enabled and the job ran with no
    trigger. Now the button is disabled, the reason is named under it, and no job reaches the store."""
    before = len(JobStore(server["data"]).list())  # the module's earlier tests queue jobs of their own
    page.goto(f"{server['url']}/new_audit")
    page.locator(".st-key-model_file input[type=file]").set_input_files(str(_model(tmp_path)))
    page.get_by_text("Model loads").wait_for(timeout=120_000)
    _upload(page, "unlabeled_files", _flat_zip(digits_files, tmp_path / "unlabeled.zip"))
    page.get_by_text("Found in unlabeled.zip").wait_for(timeout=60_000)
    _submit_button(page).to_be_enabled(timeout=60_000)  # model and images: ready
    page.get_by_text("I know the trigger").click()
    choose(page, "trigger_kind", "patch")
    page.get_by_text("Give the trigger's file to use it.", exact=True).wait_for(timeout=60_000)
    _submit_button(page).to_be_disabled(timeout=60_000)  # a pattern trigger without its file
    page.get_by_text("Fix the trigger section: Give the trigger's file").wait_for(timeout=60_000)
    pattern = tmp_path / "pattern10.png"  # 10×10: larger than the model's 8×8 input, wherever it is placed
    Image.new("L", (10, 10), 255).save(pattern)
    _upload(page, "trigger_patch_image", pattern)
    _submit_button(page).to_be_disabled(timeout=60_000)
    reason = page.get_by_text(re.compile(r"Fix the trigger section: .*does not fit"))
    reason.wait_for(timeout=60_000)  # the reason under the button, once the rerun with the pattern ends
    _submit_button(page).to_be_disabled()
    page.get_by_role("button", name="Start the audit").click(force=True)  # a disabled button does nothing
    page.wait_for_timeout(3000)
    reason.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "new_audit_trigger_blocks_start.png", full_page=True)
    assert len(JobStore(server["data"]).list()) == before  # nothing was queued, with or without the trigger
