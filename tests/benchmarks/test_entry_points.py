"""Every script in benchmarks/ starts: its entry point runs at its smallest size (`--smoke`, see
benchmarks/common.py) in a subprocess, exits 0 and writes its result JSON, with the keys its
README table is read from, to a temporary folder (never over benchmarks/results/).

The files are found by glob: a new one that is neither a helper (HELPERS) nor has a line in SMOKE
fails here until it has a smoke path. The browser-driven ones (load.py, page_speed.py) stop after
their first real step: the dashboard up and its first page measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_fashion_mnist

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
# Script → (arguments after --smoke, {tmp} for the test's folder; its JSON under {tmp}; keys it must
# hold; whether it reads Fashion-MNIST).
SMOKE: dict[str, tuple[list[str], str, set[str], bool]] = {
    "blind_cost.py": (["--results", "{tmp}"], "blind_cost.json", {"rows", "table", "findings", "sgemm_gflops"}, True),
    "blind_demo.py": (["--results", "{tmp}"], "blind_demo.json", {"rows", "table", "sgemm_gflops"}, True),
    "calibrate.py": (["--results", "{tmp}"], "zoo_score.json", {"parts", "thresholds", "reliability", "models"}, False),
    "defenses.py": (["--results", "{tmp}"], "defenses.json", {"rows", "table", "executor", "sgemm_gflops"}, True),
    "fuzz.py": (["--out", "{tmp}/fuzz.json"], "fuzz.json", {"inputs_total", "pytest_exit_code", "inputs"}, False),
    "hostile.py": (["--out", "{tmp}/hostile.json"], "hostile.json", {"rows", "all_within_target"}, False),
    "kd_speed.py": (["--results", "{tmp}"], "kd_speed.json", {"kd_images_per_s", "ratio_ours_over_naive"}, True),
    "load.py": (["--results", "{tmp}"], "load.json", {"render_s", "isolation", "jobs", "wall_s"}, False),
    "onnx_speed.py": (["--results", "{tmp}"], "onnx_speed.json", {"kd_images_per_s", "ratio_onnx_over_native"}, True),
    "page_speed.py": (
        ["--data-dir", "{tmp}/data", "--out", "{tmp}/page_speed.json"],
        "page_speed.json",
        {"rows", "sgemm_gflops", "browser"},
        False,
    ),
    "quick_demo.py": (["--results", "{tmp}"], "quick_demo.json", {"rows", "table", "sgemm_gflops"}, True),
    "scale_out.py": (["--results", "{tmp}"], "scale_out.json", {"rows", "table", "setup", "sweep"}, True),
    "table5.py": (["--results", "{tmp}"], "table5.json", {"rows", "table", "config", "wall_s"}, True),
    "verdict.py": (["--results", "{tmp}"], "verdict.json", {"rows", "table", "models"}, True),
    "zoo.py": (["--results", "{tmp}"], "zoo.json", {"rows", "table", "models", "setup"}, True),
}


# Modules the scripts import, not run on their own
HELPERS = {"common.py", "dashboard.py", "login.py"}


def scripts() -> list[str]:
    return sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)


def _param(name: str):
    marks = [needs_fashion_mnist] if name in SMOKE and SMOKE[name][3] else []
    return pytest.param(name, marks=marks, id=name.removesuffix(".py"))


def test_the_scripts_are_found_and_the_helpers_are_no_scripts():
    assert {"load.py", "page_speed.py", "quick_demo.py"} <= set(scripts())
    for name in HELPERS:
        assert "__main__" not in (BENCHMARKS / name).read_text(), f"benchmarks/{name} runs: give it a smoke run"


@pytest.mark.parametrize("name", [_param(n) for n in scripts()])
def test_the_script_starts_and_writes_its_result(name: str, tmp_path: Path):
    assert name in SMOKE, f"benchmarks/{name} has no smoke run: give it --smoke and a line in SMOKE here"
    args, out, keys, _ = SMOKE[name]
    before = {p: p.stat().st_mtime_ns for p in (BENCHMARKS / "results").glob("*.json")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDAUDIT_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, f"benchmarks/{name}", "--smoke", *(a.format(tmp=tmp_path) for a in args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / out).read_text())
    assert keys <= set(result), sorted(result)
    assert all(result[k] not in (None, [], {}) for k in keys), {k: result[k] for k in keys}
    after = {p: p.stat().st_mtime_ns for p in (BENCHMARKS / "results").glob("*.json")}
    assert after == before  # the smoke run left benchmarks/results/ alone
