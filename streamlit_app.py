"""kdaudit dashboard: `streamlit run streamlit_app.py` (or `python -m app`, which also starts workers)."""

import streamlit as st

from app import login, serving, warmup
from app.words import OPEN_WITHOUT_LOGIN

st.set_page_config(page_title="kdaudit — backdoor audits", page_icon="🛡️", layout="wide")
if serving.open_without_login(st.get_option("server.address"), login.login_configured()):  # with --no-auth
    st.warning(OPEN_WITHOUT_LOGIN, icon="⚠️")

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon="🏠", url_path="home", default=True),
    st.Page("app_pages/new_audit.py", title="New audit", icon="➕", url_path="new_audit"),
    st.Page("app_pages/models.py", title="Models", icon="🗂️", url_path="models"),
    st.Page("app_pages/jobs.py", title="Jobs", icon="⏱️", url_path="jobs"),
    st.Page("app_pages/results.py", title="Results", icon="📊", url_path="results"),
    st.Page("app_pages/defenses.py", title="Defenses", icon="🧪", url_path="defenses"),
    st.Page("app_pages/candidates.py", title="Poison candidates", icon="🔎", url_path="candidates"),
    st.Page("app_pages/explain.py", title="Explain", icon="🔥", url_path="explain"),
    st.Page("app_pages/lesson.py", title="Lesson", icon="🎓", url_path="lesson"),
]
try:
    login.require_login()  # with log-in configured, nothing below runs until the user has logged in
    st.navigation(PAGES).run()
finally:  # after the first page's script (whose imports it then shares), once per process, in the background
    warmup.start()
