"""The dashboard as a child process, and the headless Chromium that drives it: shared by the browser
tests (tests/e2e/conftest.py) and the browser benchmarks (load.py, page_speed.py), so there is one
way to start, wait for and stop `python -m app`.

Importable without torch: the tests' conftest loads it before anything heavy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium, headless, with nothing that reaches the network on its own
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(
    data: Path,
    log: Path,
    *,
    workers: int | None = None,
    threads: int = 2,
    tree: Path = ROOT,
    timeout: float = 120,
    port: int | None = None,
    secrets: Path | None = None,
) -> tuple[subprocess.Popen, str]:
    """`python -m app` from checkout `tree` on data dir `data` (also its KDAUDIT_HOME), output appended
    to `log`, in its own process group; returns (process, URL) once Streamlit says it is healthy.
    `workers`: the launcher's worker count (None = its default); `threads`: OMP_NUM_THREADS; `port`:
    None = a free one (a browser's HTTP cache is keyed by URL, port included, so a benchmark that
    reuses a browser's cache across servers gives them all the same port); `secrets`: a secrets file whose
    [auth] table turns log-in on (benchmarks/login.py writes one)."""
    port = port or free_port()
    args = ["--port", str(port), "--address", "127.0.0.1", "--data-dir", str(data), "--device", "cpu"]
    if workers is not None:
        args += ["--workers", str(workers)]
    if secrets is not None:
        args += ["--secrets", str(secrets)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "KDAUDIT_HOME": str(data)}
    env.pop("KDAUDIT_SECRETS", None)  # log-in only where `secrets` asks for it, not from the caller's shell
    if tree != ROOT:
        env["PYTHONPATH"] = str(tree)
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            cwd=tree,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stop_dashboard can end all of it
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_dashboard(proc)
            raise RuntimeError("dashboard did not start:\n" + Path(log).read_text()[-3000:])
        time.sleep(0.3)


def stop_dashboard(proc: subprocess.Popen, kill_group: bool = True) -> None:
    """SIGTERM the launcher (it stops the dashboard and its workers) and wait; then, with
    `kill_group`, SIGKILL whatever is left of its process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if kill_group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
