"""How `python -m app` serves the dashboard (app.serving): this machine only by default; another address
only with log-in configured or --no-auth, and then a warning on every page; and Streamlit's settings for
a served app, as Streamlit itself resolves them from the command line and environment the launcher builds."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from app import serving
from app.__main__ import dashboard_command, parse_args
from app.words import OPEN_WITHOUT_LOGIN

ROOT = Path(__file__).resolve().parents[2]
AUTH = """
[auth]
redirect_uri = "http://kdaudit.example:8501/oauth2callback"
cookie_secret = "not-a-real-secret"
client_id = "kdaudit"
client_secret = "not-a-real-secret-either"
server_metadata_url = "http://127.0.0.1:9000/.well-known/openid-configuration"
"""


@pytest.fixture()
def secrets(tmp_path, monkeypatch) -> Path:
    """The secrets file the dashboard is given (KDAUDIT_SECRETS): empty (a test writes it), and no address in
    the environment."""
    path = tmp_path / "secrets.toml"
    path.write_text("")
    monkeypatch.setenv("KDAUDIT_SECRETS", str(path))
    monkeypatch.delenv("KDAUDIT_ADDRESS", raising=False)
    return path


def _refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_by_default_it_listens_on_this_machine_only(secrets, tmp_path):
    a = parse_args(["--data-dir", str(tmp_path)])
    assert a.address == "127.0.0.1" and not a.no_auth
    assert _flag(dashboard_command(a), "--server.address") == "127.0.0.1"


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.168.1.20", "kdaudit.example"])
def test_another_address_without_log_in_is_refused_with_how_to_configure_it(address, secrets, tmp_path, capsys):
    secrets.write_text('[general]\nteam = "blue"\n')  # a secrets file, but no [auth] section
    err = _refused(["--data-dir", str(tmp_path), "--address", address], capsys)
    assert f"refusing to serve on {address} without log-in" in err
    assert "[auth] section in .streamlit/secrets.toml" in err and '"Log-in' in err and "--no-auth" in err


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_this_machine_s_own_addresses_need_no_log_in(address, secrets, tmp_path):
    assert parse_args(["--data-dir", str(tmp_path), "--address", address]).address == address


def test_log_in_configured_or_no_auth_lets_it_serve_everywhere(secrets, tmp_path, capsys):
    a = parse_args(["--data-dir", str(tmp_path), "--address", "0.0.0.0", "--no-auth"])
    assert a.no_auth and serving.open_without_login(a.address, a.login)  # it starts, and its pages will say so
    secrets.write_text(AUTH)
    a = parse_args(["--data-dir", str(tmp_path), "--address", "0.0.0.0"])
    assert _flag(dashboard_command(a), "--server.address") == "0.0.0.0"
    assert a.login and not serving.open_without_login(a.address, a.login)
    secrets.write_text("[auth\n")
    err = _refused(["--data-dir", str(tmp_path), "--address", "0.0.0.0"], capsys)
    assert f"The secrets file {secrets} cannot be read as TOML" in err


@pytest.mark.parametrize("page", ["home", "jobs", "new_audit"])
def test_every_page_warns_when_served_without_log_in(page, secrets, tmp_path, monkeypatch):
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path / "data"))

    def warnings_on(address: str, auth: bool = False) -> list[str]:
        old = st_config.get_option("server.address")
        st_config.set_option("server.address", address)
        try:
            at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
            if auth:  # what the dashboard reads from the secrets file it is given
                at.secrets["auth"] = tomllib.loads(AUTH)["auth"]
                at.user = {"is_logged_in": True, "sub": "alice", "name": "Alice"}
            at.run()
            at.switch_page(f"app_pages/{page}.py").run()
        finally:
            st_config.set_option("server.address", old)
        assert not at.exception
        return [w.value for w in at.warning]

    assert OPEN_WITHOUT_LOGIN in warnings_on("0.0.0.0")
    assert OPEN_WITHOUT_LOGIN not in warnings_on("127.0.0.1")
    assert OPEN_WITHOUT_LOGIN not in warnings_on("0.0.0.0", auth=True)


def test_streamlit_serves_with_xsrf_protection_the_upload_limit_and_the_cookie_secret(secrets, tmp_path):
    a = parse_args(["--data-dir", str(tmp_path), "--limit", "max_upload_bytes=300MiB"])
    command = dashboard_command(a)
    env = {**serving.streamlit_env({"KDAUDIT_COOKIE_SECRET": "kept-in-the-environment"}), "PATH": "/usr/bin:/bin"}
    assert not any("kept-in-the-environment" in part for part in command)  # `ps` shows command lines
    i = command.index("run")  # the same options, resolved by Streamlit: `streamlit config show …`
    show = [*command[:i], "config", "show", *command[i + 2 :]]
    out = subprocess.run(show, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    resolved = dict(line.split(" = ", 1) for line in out.splitlines() if " = " in line and not line.startswith("#"))
    assert resolved["enableXsrfProtection"] == "true"
    assert resolved["maxUploadSize"] == "300"
    assert resolved["cookieSecret"] == '"kept-in-the-environment"'
    assert resolved["address"] == '"127.0.0.1"'
    assert serving.streamlit_env({}) == {}  # none given: Streamlit draws a random one at each start
