"""How the dashboard is served: where it listens, whether log-in is configured, and Streamlit's own
settings for a served app. `python -m app` builds the dashboard's command line and environment from
here; the dashboard asks `open_without_login` to warn on every page.

- Address: 127.0.0.1 by default, so only this machine reaches it. Any other address without log-in
  configured is refused with how to configure it (`refusal`), unless `--no-auth` asks to serve it
  anyway; then every page says so (`words.OPEN_WITHOUT_LOGIN`).
- Log-in is configured when the secrets file the dashboard is given has an `[auth]` table (README,
  "Log-in"): `app.login_settings` decides for the launcher, `app.login` inside the dashboard.
- Streamlit's settings (`streamlit_flags`, `streamlit_env`): XSRF protection on; the upload limit is
  kdcore's `max_upload_bytes`; the cookie secret comes from KDAUDIT_COOKIE_SECRET and reaches
  Streamlit in its environment (STREAMLIT_SERVER_COOKIE_SECRET), never on its command line, which
  every user of the machine can read in `ps`. Unset, Streamlit draws a random one at each start.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

from kdcore.limits import Limits

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "127.0.0.1"
COOKIE_SECRET_VARIABLE = "KDAUDIT_COOKIE_SECRET"
_MiB = 2**20


def is_local(address: str | None) -> bool:
    """Whether only this machine can reach `address` (unset or empty: Streamlit listens on all)."""
    if not address:
        return False
    if address.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def open_without_login(address: str | None, login: bool) -> bool:
    """Served beyond this machine with no log-in (`login`: whether it is configured, `app.login_settings`
    for the launcher, `app.login` in the dashboard): anyone who reaches it sees every audit."""
    return not is_local(address) and not login


def refusal(address: str, no_auth: bool, login: bool) -> str | None:
    """Why the dashboard must not start on `address`, or None."""
    if no_auth or not open_without_login(address, login):
        return None
    return (
        f"refusing to serve on {address} without log-in: anyone who reaches that address could see, download "
        "and cancel every audit. Configure log-in (an [auth] section in .streamlit/secrets.toml, see the "
        f'README, section "Log-in"), or serve on {LOCAL} (the default), or add --no-auth to serve without '
        "log-in anyway (every page then says so)"
    )


def streamlit_flags(lim: Limits, port: int, address: str) -> list[str]:
    """The dashboard's `streamlit run` options."""
    return [
        *("--server.port", str(port), "--server.address", address),
        *("--server.enableXsrfProtection", "true"),
        *("--server.maxUploadSize", str(max(1, lim.max_upload_bytes // _MiB))),
    ]


def streamlit_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What the dashboard's environment adds: the cookie secret, when one is given."""
    secret = environ.get(COOKIE_SECRET_VARIABLE)
    return {"STREAMLIT_SERVER_COOKIE_SECRET": secret} if secret else {}
