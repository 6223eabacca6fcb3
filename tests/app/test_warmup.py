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
assert not any(m in sys.modules for m in ("app.explain", "plotly.graph_objects")), "imported before the warm-up"
warmup.start(); warmup.start()
threads = [t for t in threading.enumerate() if t.name == "kdaudit-warmup"]
assert len(threads) == 1, threads
threads[0].join(timeout=120)
missing = [m for m in warmup.MODULES + ("plotly.graph_objects",) if m not in sys.modules]
assert not missing, missing
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    assert "warm-up of the dashboard's pages failed" not in out.stderr, out.stderr[-2000:]
