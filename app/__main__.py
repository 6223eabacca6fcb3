"""Start the product: the dashboard and its worker process(es), stopped together.

    python -m app [--port 8501] [--workers N] [--device auto] [--data-dir DIR] [--limit NAME=VALUE ...]

Workers are fresh processes (`python -m kdcore worker`), never forked from this one. A worker
that dies is restarted (its job is then reaped as `interrupted` and can be retried). Ctrl-C or
SIGTERM stops the dashboard and the workers. `--limit` (as `kdcore --limit`) reaches the dashboard
and the workers as KDAUDIT_LIMIT_* environment variables (`kdcore.limits`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kdcore import limits
from kdcore.errors import KDCoreError

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--port", type=int, default=int(os.environ.get("KDAUDIT_PORT", "8501")))
    ap.add_argument("--address", default=os.environ.get("KDAUDIT_ADDRESS", "0.0.0.0"))
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default 1; one job per GPU)")
    ap.add_argument("--device", default="auto", help="device for the workers: auto | cpu | cuda")
    ap.add_argument("--data-dir", default=os.environ.get("KDAUDIT_HOME", str(ROOT / "kdaudit-data")))
    ap.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a budget against hostile input, repeatable (see `python -m kdcore --help`)",
    )
    a = ap.parse_args(argv)
    try:
        lim = limits.with_overrides(limits.from_env(), a.limit)
    except KDCoreError as e:
        ap.error(str(e))
    data_dir = str(Path(a.data_dir).resolve())
    env = {**os.environ, **lim.to_env(), "KDAUDIT_HOME": data_dir, "PYTHONUNBUFFERED": "1"}
    Path(data_dir).mkdir(parents=True, exist_ok=True)

    def start_worker(i: int) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kdcore",
                "worker",
                "--data-dir",
                data_dir,
                "--device",
                a.device if a.workers == 1 or a.device != "cuda" else f"cuda:{i}",
            ],
            cwd=ROOT,
            env=env,
        )

    workers = [start_worker(i) for i in range(a.workers)]
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "streamlit_app.py"),
            "--server.port",
            str(a.port),
            "--server.address",
            a.address,
        ],
        cwd=ROOT,
        env=env,
    )
    print(
        f"kdaudit: dashboard on http://localhost:{a.port}  ·  {a.workers} worker(s)  ·  data in {data_dir}", flush=True
    )
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and ui.poll() is None:
            for i, w in enumerate(workers):
                if w.poll() is not None:
                    print(f"kdaudit: worker {w.pid} exited with {w.returncode}; starting a new one", flush=True)
                    workers[i] = start_worker(i)
            time.sleep(1.0)
    finally:
        for p in [ui, *workers]:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 15
        for p in [ui, *workers]:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
    return 0 if stopping else (ui.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
