"""Pay the analysis pages' one-time costs while the user is still on the first page.

A fresh dashboard process imports torch, plotly, the figure helpers and kdcore's model code the first
time a session opens Results, Poison candidates, Explain or Defenses, and plotly loads the validators
of every figure property the first time a figure sets it (about 0.2 s for a faceted figure). None of
that depends on the audit, so a background thread does it once per process, right after the first
page's script has run (`start`, called by streamlit_app.py), instead of on the first visit to an
audit's evidence. Starting after that script, not beside it, means the two never import the same
package at once (torch's and plotly's own import cycles could then deadlock two threads). The thread
only imports and builds a throw-away figure: it touches no job, run or session state.
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
    """Import the analysis pages' modules and build one plotly figure (Defenses and sweeps draw them)."""
    for name in MODULES:
        importlib.import_module(name)
    import plotly.graph_objects as go  # heavy: plotly; importing it off the first page's path is the warm-up's job

    fig = go.Figure(go.Scatter(x=[0.0, 1.0], y=[1.0, 0.0], mode="markers+text", text=["a", "b"]))
    fig.add_bar(x=[0, 1], y=[1, 2])
    fig.update_layout(height=200, xaxis_title="x", yaxis_title="y", legend=dict(orientation="h"))
    fig.to_json()


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
