"""Who is using the dashboard: `current_user()`, the one place every page asks.

    signed in (st.user.is_logged_in)   User(st.user.sub, their name or e-mail, is_admin=sub in admins())
    no log-in configured                User("local"): single-user mode, the admin of its own store
    log-in configured, not signed in    User(""): nobody, who owns, sees and may start nothing
                                        (so is a provider's user whose subject is "local", reserved)

The subject is the identity provider's `sub` claim: stable and unique per provider, unlike a name or
an e-mail. Admins are listed by subject, in either or both of
    KDAUDIT_ADMINS="sub1,sub2"                 (environment of the server)
    .streamlit/secrets.toml:  [kdaudit]
                              admins = ["sub1", "sub2"]
The identity comes only from Streamlit's own session (its signed log-in cookie); nothing a request
carries (query parameters, headers, widget values) can set it. Tests set `AppTest.user`, which is
what a signed-in session's `st.user` reads.
"""

from __future__ import annotations

import os

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from kdcore.jobs.owners import LOCAL_USER, User

NOBODY = User("", "not signed in")


def admins() -> frozenset[str]:
    """The admins' subjects: $KDAUDIT_ADMINS (comma-separated) and secrets.toml's [kdaudit] admins."""
    listed = {s.strip() for s in os.environ.get("KDAUDIT_ADMINS", "").split(",")}
    try:
        listed |= {str(s).strip() for s in st.secrets.get("kdaudit", {}).get("admins", [])}
    except (FileNotFoundError, StreamlitSecretNotFoundError):
        pass  # no secrets.toml: the environment alone
    return frozenset(s for s in listed if s)


def current_user() -> User:
    """The signed-in user; "local" (admin) when the server has no log-in; nobody when it has one and
    the visitor has not signed in."""
    info = st.user
    logged_in = info.get("is_logged_in")
    if logged_in is None:  # Streamlit sets it only where an [auth] section configures log-in
        return LOCAL_USER
    sub = str(info.get("sub") or "") if logged_in else ""
    if not sub or sub == LOCAL_USER.subject:  # "local" is single-user mode's, never a signed-in user's
        return NOBODY
    return User(sub, str(info.get("name") or info.get("email") or sub), is_admin=sub in admins())
