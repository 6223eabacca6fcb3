"""The dashboard's Streamlit settings, as Streamlit itself resolves them from `.streamlit/config.toml`."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

from kdcore.limits import Limits

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def config_show() -> list[str]:
    """`streamlit config show` run from the project root, once for the module."""
    out = subprocess.run(
        [sys.executable, "-m", "streamlit", "config", "show"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()


def resolved(option: str) -> str:
    lines = config_show()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"{option} = "))
    assert "was set in" in lines[i - 1] and "config.toml" in lines[i - 1], lines[i - 1]  # ours, not a default
    return lines[i].split(" = ", 1)[1].strip().strip('"')


def test_no_file_watcher():
    # With .venv inside the project, Streamlit's watcher followed every imported torch module and
    # took a whole CPU core while any page was open, slowing the workers' training ~4× on 2 cores.
    assert resolved("fileWatcherType") == "none"


def test_upload_limit_and_no_tracebacks_for_users():
    assert int(resolved("maxUploadSize")) * 2**20 == Limits().max_upload_bytes  # `python -m app` passes the limit
    assert resolved("showErrorDetails") == "none"


def test_a_plain_streamlit_run_also_listens_on_this_machine_only_with_xsrf_protection():
    assert resolved("address") == "127.0.0.1"
    assert resolved("enableXsrfProtection") == "true"
