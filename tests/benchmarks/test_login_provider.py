"""The test OpenID Connect provider (benchmarks/login.py, tests/oidc/provider.js) on its own: it starts,
publishes what Streamlit's log-in reads, and without Node.js or its npm package the log-in tests fail
with a message that says how to install them (never a skip)."""

from __future__ import annotations

import json
import tomllib
import urllib.request

import pytest

from app.login_settings import auth_table
from benchmarks.login import start_provider, stop_provider, write_secrets


def test_the_provider_serves_discovery_for_the_dashboard(tmp_path):
    provider = start_provider(8501, tmp_path / "provider.log")
    try:
        with urllib.request.urlopen(f"{provider.issuer}/.well-known/openid-configuration", timeout=10) as r:
            meta = json.load(r)
        assert meta["issuer"] == provider.issuer
        assert meta["end_session_endpoint"] == f"{provider.issuer}/session/end"  # st.logout ends its session
        assert "S256" in meta["code_challenge_methods_supported"]
        secrets = write_secrets(tmp_path, provider)
        auth = auth_table([secrets])  # complete: the launcher accepts it
        assert auth["redirect_uri"] == "http://localhost:8501/oauth2callback"
        assert tomllib.loads(secrets.read_text())["auth"]["server_metadata_url"].startswith(provider.issuer)
        assert secrets.stat().st_mode & 0o077 == 0  # the client secret is readable by its owner only
    finally:
        stop_provider(provider)
    assert provider.proc.poll() is not None


def test_without_node_the_log_in_tests_fail_saying_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no node on it
    with pytest.raises(RuntimeError, match=r"Node\.js and the npm package oidc-provider.*--with-test-provider"):
        start_provider(8501, tmp_path / "provider.log")
