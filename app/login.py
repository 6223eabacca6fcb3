"""Log-in: every page asks for it when the server is configured for it; single-user mode otherwise.

Streamlit's own OpenID Connect does the work (`st.login` / `st.user` / `st.logout`, through Authlib):
the "Log in" button sends the browser to the provider, the provider back to `/oauth2callback`, and
Streamlit keeps the user in a signed cookie. Its settings are the `[auth]` table of the secrets
(app/login_settings.py says where; `python -m app` refuses a half-written one before it starts).

`require_login()` is called once, by streamlit_app.py, before the navigation: a visitor who has not
logged in sees the log-in screen and nothing else; one who has sees their name and "Log out" in the
sidebar above every page. Without an `[auth]` table it does nothing, as before.
"""

from __future__ import annotations

import streamlit as st

from app.login_settings import missing_settings


def login_configured() -> bool:
    """Whether this dashboard asks everyone to log in: Streamlit's secrets hold an `[auth]` table."""
    return st.secrets.load_if_toml_exists() and "auth" in st.secrets


def user_label() -> str:
    """How the logged-in user is named on the page: the provider's name claim, else email, else subject."""
    return str(st.user.get("name") or st.user.get("email") or st.user.get("sub") or "")


def require_login() -> None:
    """With log-in configured: stop the page here until the user has logged in, then show who they are
    and a "Log out" button in the sidebar. Without it: nothing (single-user mode)."""
    if not login_configured():
        return
    missing = missing_settings(st.secrets["auth"])
    if missing:  # python -m app refuses this; `streamlit run` alone does not: fail closed
        st.error(
            "Log-in is half configured on this server, so nothing is shown. "
            f"The log-in settings lack: {', '.join(missing)}. Ask whoever runs the server to complete them."
        )
        st.stop()
    if not st.user.is_logged_in:
        login_screen_ui()
        st.stop()
    with st.sidebar:
        st.markdown(f"Logged in as **{user_label()}**")
        if st.button("Log out", key="logout"):
            st.logout()


def login_screen_ui() -> None:
    """The only thing a visitor sees before logging in."""
    st.title("🛡️ kdaudit")
    st.write("This server's audits are private to their owners. Log in to open the dashboard.")
    if st.button("Log in", type="primary", key="login"):
        st.login()
