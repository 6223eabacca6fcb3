"""Log-in with OpenID Connect in a real browser (issue 21), through a real provider on localhost: npm's
oidc-provider (tests/oidc/provider.js), started by the `login_server` fixture with its test accounts.

Nothing is mocked: the dashboard's "Log in" sends Chromium to the provider, the provider's own sign-in
page takes the password, the code comes back to Streamlit's /oauth2callback, Streamlit exchanges it for
the ID token (Authlib) and the sidebar names the user. "Log out" ends the session at the provider too,
so the next log-in asks again and can be someone else."""

from __future__ import annotations

from benchmarks.login import ACCOUNTS, log_in, log_out
from tests.e2e.conftest import NAV_LINK

SIDEBAR = "[data-testid=stSidebar]"


def test_every_page_asks_for_log_in_first(login_server, login_page):
    page = login_page
    for path in ("", "/jobs?job=1", "/new_audit"):
        page.goto(f"{login_server['url']}{path}")
        page.get_by_role("button", name="Log in").wait_for(timeout=120_000)
        assert page.locator(NAV_LINK).count() == 0  # no page, not even the navigation, before log-in
        assert page.get_by_role("heading", name="Jobs").count() == 0


def test_a_wrong_password_is_refused_by_the_provider(login_server, login_page):
    page = login_page
    page.goto(login_server["url"])
    page.get_by_role("button", name="Log in").click()
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(ACCOUNTS["bob"].password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").get_by_text("Wrong username or password").wait_for()
    page.goto(login_server["url"])
    page.get_by_role("button", name="Log in").wait_for(timeout=120_000)
    assert page.get_by_text("Logged in as").count() == 0


def test_alice_logs_in_and_out_then_bob(login_server, login_page):
    page, url = login_page, login_server["url"]
    log_in(page, url, "alice")
    sidebar = page.locator(SIDEBAR)
    assert sidebar.get_by_text(f"Logged in as {ACCOUNTS['alice'].name}").is_visible()
    page.locator(NAV_LINK).first.wait_for()  # the pages are there once logged in
    page.goto(f"{url}/jobs")  # and stay so on another page (Streamlit's signed cookie)
    page.get_by_role("heading", name="Jobs").first.wait_for(timeout=120_000)
    assert sidebar.get_by_text(f"Logged in as {ACCOUNTS['alice'].name}").is_visible()

    log_out(page)
    assert page.locator(NAV_LINK).count() == 0
    page.goto(f"{url}/jobs")  # logged out for good: no cookie left that opens a page
    page.get_by_role("button", name="Log in").wait_for(timeout=120_000)
    assert page.get_by_role("heading", name="Jobs").count() == 0

    log_in(page, url, "bob")  # the provider asks again: its session ended with alice's log-out
    assert sidebar.get_by_text(f"Logged in as {ACCOUNTS['bob'].name}").is_visible()
    assert sidebar.get_by_text(ACCOUNTS["alice"].name).count() == 0
