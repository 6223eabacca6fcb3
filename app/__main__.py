"""Start the product: the dashboard and the process(es) that run its jobs, stopped together.

    python -m app [--port 8501] [--address 127.0.0.1] [--no-auth] [--workers N] [--device auto] [--data-dir DIR]
                  [--limit NAME=VALUE ...] [--secrets FILE]
    python -m app --executor ray [--ray-address ADDR] [--ray-cpus N] [--ray-resource NAME=AMOUNT ...]

`--executor local` (the default) runs `--workers N` worker processes on this machine, one job each
at a time (with `--device cuda` and N > 1, worker i gets cuda:i). `--executor ray` runs instead ONE
dispatcher (`kdcore worker --executor ray`, `kdcore.jobs.ray_executor`) that sends queued jobs to a
Ray cluster (`--ray-address`, default: a one-machine cluster it starts), as many at once as the
cluster has room for; the Jobs page then shows the cluster and the node each job ran on.

Both are fresh processes (`python -m kdcore worker`), never forked from this one. One that dies is
restarted (its jobs are then reaped as `interrupted` and can be retried). Ctrl-C or SIGTERM stops
the dashboard and them. `--limit` (as `kdcore --limit`) reaches the dashboard and the jobs as
KDAUDIT_LIMIT_* environment variables (`kdcore.limits`).

Log-in (OpenID Connect, `app.login`) is on when the secrets hold an `[auth]` table: `--secrets FILE`
(or KDAUDIT_SECRETS) names the file, else Streamlit's own `.streamlit/secrets.toml`. A half-written
`[auth]` table, or a `--secrets` file that is missing or not TOML, is refused before anything starts.

The dashboard listens on 127.0.0.1 only. On any other address (`--address 0.0.0.0`: every interface) it
starts only with log-in configured (an [auth] section in .streamlit/secrets.toml, README "Log-in"),
or with `--no-auth`, and then every page warns that anyone who reaches it sees every audit. Streamlit's
settings for a served app (`app.serving`): XSRF protection on, the upload limit `max_upload_bytes`, the
cookie secret from KDAUDIT_COOKIE_SECRET.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app import serving
from app.login_settings import SECRETS_ENV, auth_table, secrets_files
from app.words import OPEN_WITHOUT_LOGIN
from kdcore import limits
from kdcore.cli.jobs import ray_resources
from kdcore.errors import KDCoreError
from kdcore.third_party import process_env

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--port", type=int, default=int(os.environ.get("KDAUDIT_PORT", "8501")))
    ap.add_argument(
        "--address",
        default=os.environ.get("KDAUDIT_ADDRESS", serving.LOCAL),
        help=f"where the dashboard listens (default {serving.LOCAL}: this machine only; 0.0.0.0: every interface, "
        "which needs log-in configured or --no-auth)",
    )
    ap.add_argument(
        "--no-auth",
        action="store_true",
        help="serve on another address without log-in configured; every page then warns that anyone who "
        "reaches it sees every audit",
    )
    ap.add_argument("--workers", type=int, help="local worker processes (default 1; one job per GPU)")
    ap.add_argument("--device", default="auto", help="device for the jobs: auto | cpu | cuda")
    ap.add_argument("--data-dir", default=os.environ.get("KDAUDIT_HOME", str(ROOT / "kdaudit-data")))
    ap.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a budget against hostile input, repeatable (see `python -m kdcore --help`)",
    )
    ap.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: --workers processes on this machine (default); ray: one dispatcher that sends jobs to a "
        "Ray cluster (needs: pip install -r requirements-ray.txt)",
    )
    ap.add_argument("--ray-address", help="with --executor ray: the cluster to join, e.g. 10.0.0.5:6379 or auto")
    ap.add_argument("--ray-cpus", type=float, help="with --executor ray: CPUs each job asks of the cluster (default 1)")
    ap.add_argument(
        "--ray-resource",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="with --executor ray: a custom resource each job asks for, repeatable",
    )
    ap.add_argument(
        "--secrets",
        default=os.environ.get(SECRETS_ENV),
        metavar="FILE",
        help="the secrets file whose [auth] table turns log-in on (default: Streamlit's .streamlit/secrets.toml)",
    )
    a = ap.parse_args(argv)
    try:
        a.lim = limits.with_overrides(limits.from_env(), a.limit)
        ray_resources(a.ray_resource)
        a.login = auth_table(secrets_files(a.secrets)) is not None
        why_not = serving.refusal(a.address, a.no_auth, a.login)
    except KDCoreError as e:
        ap.error(str(e))
    if why_not:
        ap.error(why_not)
    if a.executor == "ray":
        if a.workers is not None:
            ap.error("--workers is for --executor local; under Ray one dispatcher runs as many jobs as fit")
        if importlib.util.find_spec("ray") is None:
            ap.error("--executor ray needs Ray, which is not installed: pip install -r requirements-ray.txt")
    elif a.ray_address or a.ray_cpus is not None or a.ray_resource:
        ap.error("--ray-address, --ray-cpus and --ray-resource go with --executor ray")
    if a.ray_cpus is not None and a.ray_cpus <= 0:
        ap.error(f"--ray-cpus must be > 0; got {a.ray_cpus}")
    a.data_dir = str(Path(a.data_dir).resolve())
    a.secrets = str(Path(a.secrets).expanduser().resolve()) if a.secrets else None
    return a


def worker_commands(a: argparse.Namespace) -> list[list[str]]:
    """The command line of each job process to keep running: `--workers` local workers, or the one
    Ray dispatcher."""
    base = [sys.executable, "-m", "kdcore", "worker", "--data-dir", a.data_dir]
    if a.executor == "ray":
        ray = [*base, "--executor", "ray", "--device", a.device]
        ray += ["--ray-address", a.ray_address] if a.ray_address else []
        ray += ["--ray-cpus", str(a.ray_cpus)] if a.ray_cpus is not None else []
        for item in a.ray_resource:
            ray += ["--ray-resource", item]
        return [ray]
    n = a.workers or 1
    return [[*base, "--device", a.device if n == 1 or a.device != "cuda" else f"cuda:{i}"] for i in range(n)]


def dashboard_command(a: argparse.Namespace) -> list[str]:
    """The dashboard's command line (its cookie secret goes in its environment: `serving.streamlit_env`)."""
    run = [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py")]
    secrets = ["--secrets.files", a.secrets] if a.secrets else []
    return [*run, *serving.streamlit_flags(a.lim, a.port, a.address), *secrets]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    data_dir = a.data_dir
    env = {**os.environ, **a.lim.to_env(), "KDAUDIT_HOME": data_dir, "PYTHONUNBUFFERED": "1"}
    env.update(process_env(Path(data_dir), env))  # onnxruntime's telemetry off, torch's cache in the data dir
    env.pop(serving.COOKIE_SECRET_VARIABLE, None)  # the dashboard's alone
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    commands = worker_commands(a)

    def start_worker(i: int) -> subprocess.Popen:
        # A terminal's Ctrl-C goes to its whole process group. The Ray dispatcher is kept out of it so that
        # it only gets the SIGTERM sent below, which it handles (its jobs marked interrupted, their tasks
        # cancelled, Ray shut down); a SIGINT first would leave that SIGTERM to land in Ray's own shutdown.
        return subprocess.Popen(commands[i], cwd=ROOT, env=env, start_new_session=a.executor == "ray")

    workers = [start_worker(i) for i in range(len(commands))]
    ui = subprocess.Popen(dashboard_command(a), cwd=ROOT, env={**env, **serving.streamlit_env(os.environ)})
    runs = f"{len(commands)} worker(s)" if a.executor == "local" else f"Ray ({a.ray_address or 'one-machine cluster'})"
    host = "localhost" if a.address in ("0.0.0.0", "::", serving.LOCAL) else a.address
    who = "log-in required" if a.login else "single-user mode"
    print(f"kdaudit: dashboard on http://{host}:{a.port}  ·  {who}  ·  {runs}  ·  data in {data_dir}", flush=True)
    if serving.open_without_login(a.address, a.login):
        print(f"kdaudit: WARNING: the dashboard listens on {a.address}. {OPEN_WITHOUT_LOGIN}", flush=True)
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
                    what = "worker" if a.executor == "local" else "Ray dispatcher"
                    print(f"kdaudit: {what} {w.pid} exited with {w.returncode}; starting a new one", flush=True)
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
