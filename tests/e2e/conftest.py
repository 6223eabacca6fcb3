"""The browser tests' shared pieces: the dashboard (`python -m app`, dashboard + worker) as a
module-scoped server (`server`; `login_server`: with log-in through a real OpenID Connect provider on
localhost, benchmarks/login.py), one headless Chromium page per module (`page`, `login_page`; or one
Chromium with a page per user: `chromium`, `new_page`), and the steps several tests repeat
(waiting for a job, opening a page once it has drawn, uploading the digits model and its data).
Screenshots go to $KDAUDIT_SCREENSHOTS (default build/screenshots)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from benchmarks.dashboard import CHROMIUM, FLAGS, free_port, start_dashboard, stop_dashboard
from benchmarks.login import start_provider, stop_provider, write_secrets
from kdcore.jobs.store import JobStore
from tests.conftest import screenshot_name

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("KDAUDIT_SCREENSHOTS", ROOT / "build" / "screenshots"))
NAV_LINK = '[data-testid="stSidebarNavLink"]'  # one per page in the sidebar's navigation


def shot(page, title: str, variant: str = "") -> None:
    """A full-page screenshot named after the page's title in the navigation (`screenshot_name`): the
    README's screenshots are these files, and tests/test_screenshots.py checks the names still match."""
    page.screenshot(path=SHOTS / screenshot_name(title, variant), full_page=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("e2e-home")
    proc, url = start_dashboard(data, data / "server.log")
    yield {"url": url, "data": data}
    stop_dashboard(proc, kill_group=False)  # the launcher alone must stop its worker
    assert (
        "worker"
        not in subprocess.run(
            ["pgrep", "-af", f"kdcore worker --data-dir {data}"], capture_output=True, text=True
        ).stdout
    )


@pytest.fixture(scope="module")
def login_server(tmp_path_factory):
    """As `server`, with log-in on: npm's oidc-provider (tests/oidc/provider.js) on a free port with the
    accounts of benchmarks/login.py's ACCOUNTS, and the dashboard started with a secrets file pointing at
    it (outside the data directory) and naming its ADMINS (carol). "url" is http://localhost:PORT, the host
    of its redirect URI (the log-in cookie is the host's); "provider" is the running provider."""
    data = tmp_path_factory.mktemp("e2e-login-home")
    port = free_port()
    provider = start_provider(port, data / "provider.log")
    try:
        secrets = write_secrets(tmp_path_factory.mktemp("e2e-secrets"), provider)
        proc, _ = start_dashboard(data, data / "server.log", port=port, secrets=secrets)
    except BaseException:
        stop_provider(provider)
        raise
    yield {"url": f"http://localhost:{port}", "data": data, "provider": provider}
    stop_dashboard(proc)
    stop_provider(provider)


@contextlib.contextmanager
def chromium():
    """One headless Chromium (Debian's); `new_page(browser)` opens pages in it."""
    assert Path(CHROMIUM).exists(), "Chromium is missing: ./scripts/setup.sh installs Debian's chromium"
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def new_page(browser):
    """A 1400 × 1000 page in a fresh browser context: its own cookies, so its own log-in (one per user)."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(60_000)
    return pg


@contextlib.contextmanager
def chromium_page():
    """One headless Chromium (Debian's) and one page in it, 1400 × 1000."""
    with chromium() as browser:
        yield new_page(browser)


@pytest.fixture(scope="module")
def page(server):
    with chromium_page() as pg:
        yield pg


@pytest.fixture(scope="module")
def login_page(login_server):
    with chromium_page() as pg:
        yield pg


def wait_job(data: Path, job_id: int, timeout: float = 900) -> None:
    store, end = JobStore(data), time.monotonic() + timeout
    while time.monotonic() < end:
        j = store.get(job_id)
        if j.terminal:
            assert j.state == "succeeded", j.error
            return
        time.sleep(2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {store.get(job_id)}")


def open_ready(page, url: str, ready: str, count: int = 1) -> None:
    page.goto(url)
    page.wait_for_function(f"document.querySelectorAll({ready!r}).length >= {count}", timeout=120_000)


def choose(page, key: str, option: str, tries: int = 4) -> None:
    """Pick `option` in the selectbox `.st-key-<key>`: type to filter (the dropdown is a virtualised
    list, so the last options may not be drawn until scrolled to) and click it. On a loaded machine the
    page may still be rerunning when the box is clicked, and a redraw swallows the typed text, so wait
    for the script to settle and try again."""
    box = page.locator(f".st-key-{key} input")
    for attempt in range(tries):
        page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
        box.click()
        box.fill(option)
        item = page.get_by_role("option", name=option)
        try:
            item.wait_for(timeout=15_000)
            item.click()
            return
        except Exception:
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")
            page.wait_for_timeout(1000)


def upload_digits(page, url: str, digits_files: dict, tmp_path: Path) -> None:
    """On New audit: the digits model, its unlabelled images as a zip, its training and test zips."""
    unl_zip = tmp_path / "unlabeled.zip"
    with zipfile.ZipFile(unl_zip, "w") as z:
        for p in sorted(Path(digits_files["unlabeled"]).rglob("*.png")):
            z.write(p, f"clean/{p.relative_to(digits_files['unlabeled']).as_posix()}")
    page.goto(f"{url}/new_audit")
    page.locator(".st-key-model_file input[type=file]").set_input_files(str(digits_files["model"]))
    page.get_by_text("Model loads").wait_for(timeout=120_000)
    for key, path in (
        ("unlabeled_files", unl_zip),
        ("train_file", digits_files["train"]),
        ("test_file", digits_files["test"]),
    ):
        # each upload reruns the script: wait until the uploader lists the file before the next one
        page.locator(f".st-key-{key} input[type=file]").set_input_files(str(path))
        page.locator(f".st-key-{key}").get_by_text(Path(path).name).wait_for(timeout=60_000)
        page.wait_for_timeout(500)


def digits_trigger(page) -> None:
    """On New audit: the digits poisons' trigger (a 2×2 BadNets patch in the corner, target 7)."""
    page.get_by_text("I know the trigger").click()
    for key, value in (("trigger_target", "7"), ("trigger_size", "2"), ("trigger_margin", "0")):
        box = page.locator(f".st-key-{key} input")
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(700)
