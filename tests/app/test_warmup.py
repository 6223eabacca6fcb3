"""The dashboard's background warm-up: it imports what the analysis pages need, once per process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_warm_up_imports_the_analysis_pages_modules_once_in_the_background():
    code = """
import sys, threading
from app import warmup
assert not any(m in sys.modules for m in ("app.explain", "plotly.subplots")), "imported before the warm-up"
warmup.start(); warmup.start()
threads = [t for t in threading.enumerate() if t.name == "kdaudit-warmup"]
assert len(threads) == 1, threads
threads[0].join(timeout=120)
missing = [m for m in warmup.MODULES + ("plotly.subplots",) if m not in sys.modules]
assert not missing, missing
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    assert "warm-up of the dashboard's pages failed" not in out.stderr, out.stderr[-2000:]


def test_home_and_jobs_carry_the_hidden_chart_that_loads_the_chart_code(kdaudit_home):
    from tests.app.conftest import open_page

    for page in ("home", "jobs"):
        at = open_page(page)
        assert not at.exception, at.exception
        charts = [c for c in at.get("plotly_chart") if c.proto.id and "kdaudit-chart-code" in c.proto.id]
        assert len(charts) == 1, page
        assert any(".st-key-kdaudit-chart-code" in str(h.proto) for h in at.get("html")), page
