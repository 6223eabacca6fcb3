"""`kdcore jobs ...` (submit, list, show, cancel, retry, logs) and `kdcore worker`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kdcore.errors import InputError

EXIT_OK = 0


def add_parsers(sub) -> None:
    # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
    from kdcore.cli.flags import trust_arg
    from kdcore.runs import KINDS

    p = sub.add_parser("worker", help="run queued jobs from the job store (the dashboard starts these)")
    p.add_argument("--data-dir", help="job store folder (default $KDAUDIT_HOME or ./kdaudit-data)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (one job per GPU at a time)")
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.add_argument("--job", type=int, help="run exactly this queued job, then exit (e.g. under Ray Jobs)")
    p.add_argument("--drain", action="store_true", help="exit once the queue is empty")
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: run jobs in this process, one at a time (default); ray: dispatch them to a Ray "
        "cluster as tasks, as many at once as it has room for (needs the optional extra: "
        "pip install -r requirements-ray.txt)",
    )
    p.add_argument(
        "--ray-address",
        help="the cluster to join, e.g. 10.0.0.5:6379 or auto (default: start a one-machine cluster)",
    )
    p.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs each job asks of the Ray cluster (default 1)")
    p.add_argument(
        "--ray-resource",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="a custom resource each job asks for, repeatable: jobs run only on nodes that have it",
    )
    trust_arg(p)

    p = sub.add_parser("jobs", help="submit, list, show, cancel, retry jobs and read their logs")
    jsub = p.add_subparsers(dest="jobs_command", required=True)
    commands = sorted(k.replace("_", "-") for k in KINDS)  # the kind audit_many is the command audit-many
    s = jsub.add_parser(
        "submit",
        help="jobs submit KIND [options of `kdcore KIND`] [--json] [--label L] [--data-dir D]",
        description=f"Validate and queue a job. KIND is one of {', '.join(commands)}; its options are "
        "those of `kdcore KIND --help`. --data-dir here is the job store's folder.",
    )
    s.add_argument("kind", choices=sorted({*commands, *KINDS}))  # audit-many, or its kind's name audit_many
    s.add_argument("options", nargs=argparse.REMAINDER, help="options of the kind, as for `kdcore KIND`")
    for name, h in (
        ("list", "all jobs, newest first"),
        ("show", "one job"),
        ("cancel", "cancel a job"),
        ("retry", "queue a failed/cancelled/interrupted job again"),
        ("logs", "a job's log"),
    ):
        q = jsub.add_parser(name, help=h)
        if name != "list":
            q.add_argument("id", type=int)
        if name == "logs":
            q.add_argument("--tail", type=int, default=50, help="last N lines (0 = all)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.add_argument("--data-dir")


def _submit_options() -> argparse.ArgumentParser:
    """The submit options mixed among the kind's options (taken out with parse_known_args)."""
    p = argparse.ArgumentParser(prog="kdcore jobs submit", add_help=False, allow_abbrev=False)
    p.add_argument("--json", action="store_true")
    p.add_argument("--label", default="")
    p.add_argument("--data-dir")
    return p


def submit(a: argparse.Namespace) -> int:
    from kdcore.cli import build_parser, command_of, kind_module, kind_of  # kdcore.cli imports this lazily

    # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
    from kdcore.config import to_dict
    from kdcore.jobs.store import JobStore

    own, opts = _submit_options().parse_known_args(list(a.options))
    store = JobStore(own.data_dir)
    kind = kind_of(a.kind)
    kind_args = build_parser().parse_args([command_of(kind), *opts])
    if getattr(kind_args, "trust_code", False):  # the check before queueing builds the --arch-file's model
        # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
        from kdcore.models.plugins import trust_code

        trust_code()
    module = kind_module(a.kind)
    d = to_dict(module.config_from_args(kind_args))
    if module.CACHE_KEY:  # a queued job caches trained teachers in the job store
        *parents, leaf = module.CACHE_KEY
        node = d
        for key in parents:
            node = node.get(key) or {}
        if node and not node.get(leaf):
            node[leaf] = str(store.data_dir / "cache")
    job = store.submit(kind, d, label=own.label, run_dir=str(kind_args.out) if kind_args.out else None)
    parts = store.group(job.id)
    if own.json:
        print(json.dumps({**job.to_dict(), "parts": [p.id for p in parts]}))
    else:
        print(job.id)
        if parts:  # stdout stays the one id scripts read; the fan-out is news for a person
            print(f"job {job.id} gathers {len(parts)} part jobs ({parts[0].id}–{parts[-1].id})", file=sys.stderr)
    return EXIT_OK


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _job_line(j) -> str:
    prog = f"{j.stage} {j.step}/{j.total}" if j.state == "running" else ""
    return f"{j.id:>5}  {j.kind:<6} {j.state:<11} {_fmt_s(j.elapsed()):>7}  {prog:<24} {j.label or ''}"


def jobs_main(a: argparse.Namespace) -> int:
    # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
    from kdcore.jobs.store import JobStore

    if a.jobs_command == "submit":
        return submit(a)
    store = JobStore(a.data_dir)
    if a.jobs_command == "list":
        jobs = store.list()
        if a.json:
            print(json.dumps([j.to_dict() for j in jobs], indent=2))
        else:
            print("   id  kind   state       elapsed  progress                 label")
            for j in jobs:
                print(_job_line(j))
        return EXIT_OK
    if a.jobs_command == "logs":
        job = store.get(a.id)
        log_path = Path(job.run_dir) / "log.txt"
        lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
        lines = lines[-a.tail :] if a.tail else lines
        print(json.dumps({"id": job.id, "log": str(log_path), "lines": lines}) if a.json else "\n".join(lines))
        return EXIT_OK
    job = {"show": store.get, "cancel": store.cancel, "retry": store.retry}[a.jobs_command](a.id)
    if a.json:
        print(json.dumps(job.to_dict(), indent=2))
    elif a.jobs_command == "retry":
        print(job.id)
    else:
        print(f"job {job.id} ({job.kind}{', ' + job.label if job.label else ''}): {job.state}")
        if job.state == "running":
            eta = job.eta()
            print(f"  progress: {job.stage} {job.step}/{job.total} {job.message}  (eta {_fmt_s(eta)})")
            if job.cancel_requested:
                print("  cancel requested: stops within seconds")
        print(f"  device: {job.device or '—'}   elapsed: {_fmt_s(job.elapsed())}")
        print(f"  run directory: {job.run_dir}")
        print(f"  report: {job.report_path or '—'}")
        if job.parent_id:
            print(f"  retry of job {job.parent_id}")
        if job.error:
            print(f"  reason: {job.error.strip().splitlines()[-1]}")
    return EXIT_OK


def ray_resources(items: list[str]) -> dict[str, float]:
    """`--ray-resource NAME=AMOUNT` values as {name: amount} (also checked by `python -m app`)."""
    custom = {}
    for item in items:
        name, _, amount = item.partition("=")
        try:
            custom[name.strip()] = float(amount)
        except ValueError:
            raise InputError(f"--ray-resource takes NAME=AMOUNT, e.g. gpu_a100=1; got {item!r}") from None
        if not name.strip():
            raise InputError(f"--ray-resource takes NAME=AMOUNT, e.g. gpu_a100=1; got {item!r} (no name)")
    return custom


def worker_main(a: argparse.Namespace) -> int:
    # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
    from kdcore.jobs.store import JobStore
    from kdcore.jobs.worker import work

    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    store = JobStore(a.data_dir)
    if a.executor == "ray":
        if a.job is not None:
            raise InputError("--job runs one job in this process; it does not go with --executor ray")
        try:
            from kdcore.jobs.ray_executor import work_ray  # optional extra: ray (requirements-ray.txt)
        except ImportError as e:
            raise InputError(
                f"--executor ray needs Ray, which is not installed ({e}); install the optional extra: "
                "pip install -r requirements-ray.txt"
            ) from None
        idle = 10.0 if a.drain else None
        custom = ray_resources(a.ray_resource)
        work_ray(store, a.ray_address, a.device, a.ray_cpus, once=a.once, idle_exit_s=idle, custom=custom)
        return EXIT_OK
    work(store, device=a.device, once=a.once, job_id=a.job, idle_exit_s=2.0 if a.drain else None)
    return EXIT_OK
