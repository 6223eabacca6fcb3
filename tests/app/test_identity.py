"""`app.identity.current_user`: the signed-in user from Streamlit's own `st.user` (set here through
`AppTest.user`, as a signed session sets it), single-user "local" without log-in, nobody when log-in
is configured and the visitor has not signed in; admins from the environment and secrets.toml."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest


def _who() -> None:
    import streamlit as st

    from app.identity import current_user

    u = current_user()
    st.text(f"{u.subject}|{u.name}|{u.is_admin}")


def who(user: dict | None = None, secrets: dict | None = None, query: dict | None = None) -> str:
    at = AppTest.from_function(_who)
    if user is not None:
        at.user = user
    if secrets is not None:
        at.secrets["kdaudit"] = secrets
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    assert not at.exception
    return at.text[0].value


@pytest.fixture(autouse=True)
def no_admins(monkeypatch):
    monkeypatch.delenv("KDAUDIT_ADMINS", raising=False)


def test_without_log_in_the_user_is_local_the_admin_of_its_own_store():
    assert who() == "local|local|True"  # AppTest's default st.user, as a server without [auth]
    assert who(query={"sub": "root-sub", "user": "root-sub"}) == "local|local|True"  # the URL sets nobody


def test_a_signed_in_user_is_their_subject_and_an_admin_only_when_listed(monkeypatch):
    ann = {"is_logged_in": True, "sub": "s-1", "name": "Ann", "email": "ann@example.org"}
    assert who(ann) == "s-1|Ann|False"
    assert who({"is_logged_in": True, "sub": "s-2", "email": "bo@example.org"}) == "s-2|bo@example.org|False"
    monkeypatch.setenv("KDAUDIT_ADMINS", "x-9, s-1")
    assert who(ann) == "s-1|Ann|True"
    monkeypatch.delenv("KDAUDIT_ADMINS")
    assert who(ann, secrets={"admins": ["s-1"]}) == "s-1|Ann|True"
    assert who(ann, secrets={"admins": ["s-2"]}) == "s-1|Ann|False"


def test_a_visitor_not_signed_in_or_with_the_reserved_subject_is_nobody():
    assert who({"is_logged_in": False}) == "|not signed in|False"
    assert who({"is_logged_in": True, "name": "no subject"}) == "|not signed in|False"
    assert who({"is_logged_in": True, "sub": "local", "name": "Mallory"}) == "|not signed in|False"
