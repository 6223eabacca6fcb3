"""Log-in for the browser tests and benchmarks: a real OpenID Connect provider on localhost (npm's
oidc-provider, tests/oidc/provider.js), the dashboard's secrets pointing at it, and the browser steps
of logging in and out through the provider's own pages.

    provider = start_provider(dashboard_port, log)     # the provider, its one client: the dashboard
    secrets = write_secrets(folder, provider)          # [auth] for `python -m app --secrets FILE`
    start_dashboard(data, log, port=dashboard_port, secrets=secrets)
    log_in(page, dashboard_url, "alice"); log_out(page)

The accounts are test accounts, handed to the provider at its start (ACCOUNTS); the provider's `sub`
claim is the username, and carol is the dashboard's admin (ADMINS). Importable without
torch, like benchmarks/dashboard.py.
"""

from __future__ import annotations

import json
import os
import secrets as random
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.dashboard import free_port

ROOT = Path(__file__).resolve().parents[1]
PROVIDER_DIR = ROOT / "tests" / "oidc"
CLIENT_ID = "kdaudit"


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    name: str  # the provider's `name` claim: what the dashboard shows
    email: str


ACCOUNTS = {
    "alice": Account("alice", "alice-password", "Alice Liddell", "alice@example.test"),
    "bob": Account("bob", "bob-password", "Bob Marley", "bob@example.test"),
    "carol": Account("carol", "carol-password", "Carol Shaw", "carol@example.test"),
}
ADMINS = ("carol",)  # the dashboard's admins (write_secrets' [kdaudit] table): by subject, the username here


@dataclass(frozen=True)
class Provider:
    proc: subprocess.Popen
    issuer: str  # http://127.0.0.1:PORT
    redirect_uri: str  # the dashboard's http://localhost:PORT/oauth2callback
    client_secret: str


def start_provider(dashboard_port: int, log: Path, timeout: float = 180) -> Provider:
    """Start tests/oidc/provider.js on a free port with the dashboard on `dashboard_port` as its client;
    returns once its discovery document answers (in a full test run on 2 busy cores it once took over 60 s).
    Raises a RuntimeError that says how to install it when
    Node.js or the npm package is missing."""
    node = shutil.which("node")
    if node is None or not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(
            "The log-in tests need Node.js and the npm package oidc-provider (tests/oidc/package.json); "
            f"node: {node or 'not found'}. Run ./scripts/setup.sh --with-test-provider (./test.sh does)"
        )
    port = free_port()
    redirect_uri = f"http://localhost:{dashboard_port}/oauth2callback"
    client_secret = random.token_urlsafe(24)
    accounts = {a.username: {"password": a.password, "name": a.name, "email": a.email} for a in ACCOUNTS.values()}
    env = {
        **os.environ,
        "OIDC_PORT": str(port),
        "OIDC_REDIRECT_URI": redirect_uri,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": client_secret,
        "OIDC_ACCOUNTS": json.dumps(accounts),
    }
    with open(log, "a") as out:
        proc = subprocess.Popen([node, "provider.js"], cwd=PROVIDER_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
    issuer = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=2) as r:
                if json.load(r)["issuer"] == issuer:
                    return Provider(proc, issuer, redirect_uri, client_secret)
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_provider(Provider(proc, issuer, redirect_uri, client_secret))
            raise RuntimeError("the OpenID Connect provider did not start:\n" + Path(log).read_text()[-3000:])
        time.sleep(0.3)


def stop_provider(provider: Provider) -> None:
    if provider.proc.poll() is None:
        provider.proc.terminate()
        try:
            provider.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            provider.proc.kill()
            provider.proc.wait()


def write_secrets(folder: Path, provider: Provider) -> Path:
    """`folder/secrets.toml`: the dashboard's [auth] table for `provider` (the README's example, filled in),
    and its admins (`ADMINS`, in the [kdaudit] table that app/identity.py reads)."""
    path = folder / "secrets.toml"
    path.write_text(
        "[auth]\n"
        f'redirect_uri = "{provider.redirect_uri}"\n'
        f'cookie_secret = "{random.token_urlsafe(32)}"\n'
        f'client_id = "{CLIENT_ID}"\n'
        f'client_secret = "{provider.client_secret}"\n'
        f'server_metadata_url = "{provider.issuer}/.well-known/openid-configuration"\n'
        # oidc-provider knows no "select_account", Streamlit's default prompt: ask for the password each time
        "[auth.client_kwargs]\n"
        'prompt = "login"\n'
        "[kdaudit]\n"
        f"admins = {json.dumps(list(ADMINS))}\n"
    )
    path.chmod(0o600)
    return path


def log_in(page, url: str, username: str) -> None:
    """From the dashboard's log-in screen through the provider's sign-in page and back, as `username`;
    returns once the sidebar names the user."""
    account = ACCOUNTS[username]
    page.goto(url)
    page.get_by_role("button", name="Log in").click()
    page.get_by_label("Username").fill(account.username)  # the provider's own page
    page.get_by_label("Password").fill(account.password)
    page.get_by_role("button", name="Sign in").click()
    page.locator("[data-testid=stSidebar]").get_by_text(f"Logged in as {account.name}").wait_for(timeout=120_000)


def log_out(page) -> None:
    """ "Log out" in the sidebar, then the provider's end-of-session page ("Yes, sign me out"); returns
    back on the dashboard's log-in screen."""
    page.locator("[data-testid=stSidebar]").get_by_role("button", name="Log out").click()
    page.get_by_role("button", name="Yes, sign me out").click()
    page.get_by_role("button", name="Log in").wait_for(timeout=120_000)
