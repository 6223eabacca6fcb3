"""Pay the analysis pages' one-time costs while the user is still on the first page.

A fresh dashboard process imports torch, plotly, the figure helpers and kdcore's model code the first
time a session opens Results, Poison candidates, Explain or Defenses, and plotly loads the validators
of every figure property the first time a figure sets it (about 0.2 s for Explain's faceted
histograms). None of that depends on the audit, so a background thread does it once per process, as
soon as the first page is served (`start`), instead of on the first visit to an audit's evidence.
The thread only imports and builds a throw-away figure: it touches no job, run or session state.
"""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger("kdaudit")

# what the analysis pages import (their app.* helpers pull in torch, plotly and kdcore's models)
MODULES = (
    "app.explain",
    "app.explain_figures",
    "app.candidates",
    "app.review_queue",
    "app.results",
    "app.verdict",
    "app.defenses",
    "app.defense_evidence",
    "app.recovered_ui",
)
_started = threading.Event()


def warm() -> None:
    """Import the analysis pages' modules and build one figure of each kind they draw."""
    import numpy as np

    for name in MODULES:
        importlib.import_module(name)
    from app.explain_figures import norm_histograms_figure
    from kdcore.explain import NORMS

    rng = np.random.default_rng(0)
    stats = {m: {c: {n: rng.random(8) for n in NORMS} for c in ("clean", "triggered")} for m in ("teacher", "student")}
    norm_histograms_figure(stats).to_json()


def _run() -> None:
    try:
        warm()
    except Exception:  # a warm-up is an optimisation: the page that needs a module reports its error
        log.exception("warm-up of the dashboard's pages failed")


def start() -> None:
    """Start the warm-up once per process (later calls do nothing)."""
    if _started.is_set():
        return
    _started.set()
    threading.Thread(target=_run, name="kdaudit-warmup", daemon=True).start()


def chart_code_ui() -> None:
    """A hidden one-point chart: the browser fetches and compiles plotly's code (a 4.7 MB script that
    Streamlit loads on the first chart a tab draws, about 1 s on 2 cores) while the user is on this
    page, so the first chart page opened from it does not wait for it. For pages without charts of
    their own that lead to ones with charts (Home, Jobs)."""
    import plotly.graph_objects as go
    import streamlit as st

    st.html("<style>.st-key-kdaudit-chart-code { display: none; }</style>")
    with st.container(key="kdaudit-chart-code"):
        fig = go.Figure(go.Scatter(x=[0], y=[0]), layout={"height": 10, "width": 10})
        st.plotly_chart(fig, key="kdaudit-chart-code-fig", config={"staticPlot": True}, width="content")
