"""Log-in's configuration and its gate (issue 21), without a provider: which secrets turn it on, what
`python -m app` refuses before it starts, and what the entry point draws before and after log-in
(AppTest's seeded `st.user`). The real log-in, through a real provider, is tests/e2e/test_browser_login.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app.__main__ import parse_args
from app.login_settings import REQUIRED, SECRETS_ENV, auth_table, login_configured_in, secrets_files
from kdcore.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "a-long-random-cookie-secret-for-tests",
    "client_id": "kdaudit",
    "client_secret": "client-secret",
    "server_metadata_url": "http://127.0.0.1:9000/.well-known/openid-configuration",
}


def toml(path: Path, auth: dict | None, extra: str = "") -> Path:
    lines = [extra] + (["[auth]", *(f'{k} = "{v}"' for k, v in auth.items())] if auth is not None else [])
    path.write_text("\n".join(lines) + "\n")
    return path


def test_without_an_auth_table_the_dashboard_is_single_user(tmp_path):
    assert not login_configured_in([tmp_path / "absent.toml"])
    assert not login_configured_in([toml(tmp_path / "s.toml", None, 'api_key = "x"')])
    assert login_configured_in([toml(tmp_path / "auth.toml", AUTH)])
    # a later file's [auth] replaces an earlier one's, as Streamlit merges its secrets files
    later = toml(tmp_path / "later.toml", {**AUTH, "client_id": "other"})
    assert auth_table([tmp_path / "auth.toml", later])["client_id"] == "other"


@pytest.mark.parametrize("key", REQUIRED)
def test_a_half_written_auth_table_is_refused_not_read_as_log_in_off(tmp_path, key):
    path = toml(tmp_path / "s.toml", {k: v for k, v in AUTH.items() if k != key})
    with pytest.raises(ConfigError, match=f"lacks {key}"):
        auth_table([path])


def test_the_launcher_refuses_bad_secrets_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    half = toml(tmp_path / "half.toml", {"client_id": "kdaudit"})
    broken = tmp_path / "broken.toml"
    broken.write_text("[auth\nclient_id = ")
    for secrets, says in ((half, "Log-in is half configured"), (broken, "cannot be read as TOML")):
        with pytest.raises(SystemExit) as e:
            parse_args(["--data-dir", str(tmp_path), "--secrets", str(secrets)])
        assert e.value.code == 2 and says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--data-dir", str(tmp_path), "--secrets", str(tmp_path / "missing.toml")])
    assert "does not exist" in capsys.readouterr().err

    good = toml(tmp_path / "good.toml", AUTH)
    a = parse_args(["--data-dir", str(tmp_path), "--secrets", str(good)])
    assert a.login and a.secrets == str(good.resolve())
    monkeypatch.setenv(SECRETS_ENV, str(good))  # the same through the environment
    assert secrets_files() == [good.resolve()] and parse_args(["--data-dir", str(tmp_path)]).login


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty data directory: the entry point and Home need no audit."""
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path))
    st.cache_resource.clear()
    st.cache_data.clear()
    return tmp_path


def entry_point(auth: dict | None, user: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    if auth is not None:
        at.secrets["auth"] = auth
    if user is not None:
        at.user = user
    return at.run()


def test_with_log_in_configured_a_visitor_sees_only_the_log_in_screen(home):
    at = entry_point(AUTH, {"is_logged_in": False})
    assert not at.exception
    assert [b.label for b in at.button] == ["Log in"]
    assert not any("is this model backdoored" in t.value for t in at.title)  # Home did not run
    assert not at.sidebar.button


def test_a_logged_in_user_sees_their_name_and_log_out_above_the_page(home):
    at = entry_point(AUTH, {"is_logged_in": True, "sub": "alice", "name": "Alice Liddell"})
    assert not at.exception
    assert "Logged in as **Alice Liddell**" in [m.value for m in at.sidebar.markdown]
    assert [b.label for b in at.sidebar.button] == ["Log out"]
    assert any("is this model backdoored" in t.value for t in at.title)  # Home ran below
    assert "Log in" not in [b.label for b in at.button]


def test_a_half_written_auth_table_shows_nothing_but_the_reason(home):
    at = entry_point({k: v for k, v in AUTH.items() if k != "client_secret"}, {"is_logged_in": False})
    assert "client_secret" in at.error[0].value
    assert not at.title and not at.button


def test_without_log_in_the_pages_open_as_before(home):
    at = entry_point(None)
    assert not at.exception
    assert any("is this model backdoored" in t.value for t in at.title)
    assert "Log out" not in [b.label for b in at.sidebar.button] and "Log in" not in [b.label for b in at.button]
