"""Issue 20's audit of many models in a real browser: on Models, three tiny digits models (one
backdoored with BadNets → 7, two clean: tests/conftest.py's `digits_models`) and the digits' shared
images start one job; its table has three rows, the backdoored model first, each linking to its Results."""

from __future__ import annotations

import zipfile
from pathlib import Path

from kdcore.jobs.store import JobStore
from tests.e2e.conftest import open_ready, shot, wait_job

MODELS = ("backdoored.safetensors", "clean-1.safetensors", "clean-2.safetensors")


def test_models_page_audits_three_models_and_ranks_the_backdoored_first(
    server, page, digits_models, digits_files, tmp_path
):
    url, data = server["url"], server["data"]
    unl_zip = tmp_path / "unlabeled.zip"
    with zipfile.ZipFile(unl_zip, "w") as z:
        for p in sorted(Path(digits_files["unlabeled"]).rglob("*.png")):
            z.write(p, f"clean/{p.name}")
    page.goto(f"{url}/models")
    page.locator(".st-key-models_files input[type=file]").set_input_files([str(digits_models / m) for m in MODELS])
    for m in MODELS:  # each checked in the sandbox
        page.get_by_text(f"{m} loads").wait_for(timeout=120_000)
    for key, path in (
        ("models_unlabeled", unl_zip),
        ("models_train", digits_files["train"]),
        ("models_test", digits_files["test"]),
    ):
        page.locator(f".st-key-{key} input[type=file]").set_input_files(str(path))
        page.locator(f".st-key-{key}").get_by_text(Path(path).name).wait_for(timeout=60_000)
        page.wait_for_timeout(500)
    page.get_by_text("Hyperparameters").click()
    for key, value in (("kd_epochs", "4"), ("batch_size", "64"), ("ft_epochs", "1")):  # short audits
        box = page.locator(f".st-key-{key} input")
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(700)
    page.get_by_role("button", name="Audit the models").click()
    page.wait_for_url("**/models?job=*")
    job_id = int(page.url.rsplit("job=", 1)[1])
    store = JobStore(data)
    job, parts = store.get(job_id), store.group(job_id)
    assert job.kind == "audit_many" and len(parts) == 3
    assert all(p.config["blind"] and p.config["kd"]["distill"]["epochs"] == 4 for p in parts)
    wait_job(data, job_id)

    open_ready(page, f"{url}/models?job={job_id}", ".st-key-models-table table tbody tr", 3)
    rows = page.locator(".st-key-models-table table tbody tr")
    assert rows.count() == 3
    first = rows.nth(0)
    assert "backdoored.safetensors" in first.inner_text() and "backdoor" in first.inner_text()
    by_model = {Path(p.config["model"]).name: p.id for p in parts}
    link = first.get_by_role("link", name="backdoored.safetensors")
    assert link.get_attribute("href").endswith(f"/results?job={by_model['backdoored.safetensors']}")
    page.get_by_role("button", name="Download the table (CSV)").wait_for()
    shot(page, "Models")
    href = link.get_attribute("href")
    open_ready(page, href if href.startswith("http") else url + href, ".st-key-verdict-card")
    assert "backdoor" in page.locator(".st-key-verdict-card").inner_text().lower()
