"""Importing kdcore loads no UI code and runs nothing; `python -m kdcore --help` works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI_MODULES = ("streamlit", "plotly")


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_engine_import_loads_no_ui() -> None:
    code = (
        "import json, sys\n"
        "import kdcore, kdcore.runs, kdcore.cli, kdcore.pipeline\n"
        f"print(json.dumps({{m: m in sys.modules for m in {UI_MODULES!r}}}))\n"
        "print(json.dumps('kdcore.pipeline' in sys.modules))\n"
    )
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    ui, loaded = (json.loads(line) for line in proc.stdout.splitlines()[-2:])
    assert loaded is True
    assert ui == dict.fromkeys(UI_MODULES, False)
    assert proc.stdout.count("\n") == 2, f"importing kdcore printed something: {proc.stdout!r}"


def test_cli_help_lists_run_kinds() -> None:
    proc = _python("-m", "kdcore", "--help")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert {"demo", "audit", "sweep"} <= listed
    assert proc.stdout.lower().startswith("usage:")
