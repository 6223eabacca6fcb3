"""Where the dashboard's log-in settings live, read without Streamlit (the launcher checks them first).

Log-in is Streamlit's own OpenID Connect (`st.login`, through Authlib). Streamlit reads its settings from
the `[auth]` table of its secrets files; this module says which files those are and whether they
configure log-in, so that `python -m app` refuses a half-written configuration before anything starts
instead of serving an open dashboard:

- `--secrets FILE` (or `KDAUDIT_SECRETS=FILE`): that file alone (the launcher passes it to Streamlit
  as `--secrets.files`), e.g. a mounted secret in a container;
- otherwise Streamlit's own places, later over earlier: `~/.streamlit/secrets.toml`, then the project's
  `.streamlit/secrets.toml`.

A file with an `[auth]` table means log-in is on; none means single-user mode ("local"), as before.
`[auth]` must then hold every key of `REQUIRED` (one provider, Streamlit's "default"): a missing key
is refused, never read as "log-in off".
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from kdcore.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SECRETS_ENV = "KDAUDIT_SECRETS"
# What st.login() needs for its default provider (streamlit/auth_util.py, validate_auth_credentials)
REQUIRED = ("redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url")


def secrets_files(explicit: str | os.PathLike | None = None) -> list[Path]:
    """The secrets files the dashboard reads, later over earlier: `explicit` (default $KDAUDIT_SECRETS)
    alone, or Streamlit's own places. Raises ConfigError when an explicit file does not exist."""
    explicit = explicit or os.environ.get(SECRETS_ENV)
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(
                f"The secrets file {path} does not exist; create it (README, “Log-in”) or pass another one"
            )
        return [path]
    return [Path.home() / ".streamlit" / "secrets.toml", ROOT / ".streamlit" / "secrets.toml"]


def missing_settings(auth: Mapping) -> list[str]:
    """The keys of `REQUIRED` that an `[auth]` table lacks or leaves empty."""
    return [k for k in REQUIRED if not str(auth.get(k) or "").strip()]


def auth_table(files: list[Path]) -> dict | None:
    """The `[auth]` table the dashboard will use (a later file's table replaces an earlier one's, as
    Streamlit merges them), or None: no log-in. Raises ConfigError for a file that is not valid TOML
    or an `[auth]` table without every required key."""
    auth = None
    for path in files:
        if not path.is_file():
            continue
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8")).get("auth")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"The secrets file {path} cannot be read as TOML ({e}); fix it and start again") from e
        if table is not None:
            auth = table
    if auth is None:
        return None
    if not isinstance(auth, dict) or missing_settings(auth):
        missing = ", ".join(missing_settings(auth)) if isinstance(auth, dict) else ", ".join(REQUIRED)
        raise ConfigError(
            f"Log-in is half configured: the [auth] table lacks {missing}; add them (README, "
            "“Log-in”) or remove the [auth] table for single-user mode"
        )
    return auth


def login_configured_in(files: list[Path]) -> bool:
    """Whether the dashboard reading `files` asks everyone to log in (raises ConfigError as `auth_table`)."""
    return auth_table(files) is not None
