"""`python -m kdcore` / `kdcore`: the command line, one module per run kind.

Each kind's module (`kdcore/cli/<kind>.py`) owns its arguments (generated from its config class by
`kdcore.cli.flags`), its flags → config mapping and its printed summary; `kdcore.cli.jobs` holds the
job commands and the worker.

Global options (before the command): `--limit NAME=VALUE`, repeatable, changes one budget of
`kdcore.limits` for this process and the sandboxed readers it starts (a worker: for every job it
runs), e.g. `kdcore --limit max_archive_bytes=8GiB --limit job_timeout_audit_s=36000 worker`.

Exit codes: 0 ok · 2 bad input (one line on stderr saying why) · 1 a bug (traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from kdcore import limits
from kdcore.cli.progress import BarProgress
from kdcore.errors import KDCoreError
from kdcore.limits import Limits
from kdcore.paths import data_home
from kdcore.third_party import process_env

EXIT_OK, EXIT_BUG, EXIT_INPUT = 0, 1, 2
OUTPUTS = "report.json, candidates.csv, models/, confusion/, log.txt"  # what a run writes (a kind's module may say)
COMMANDS = ("demo", "audit", "audit-many", "defend", "sweep", "refine")  # the run kinds, in the order --help lists them

__all__ = ["EXIT_BUG", "EXIT_INPUT", "EXIT_OK", "BarProgress", "build_parser", "main", "resolve_config"]


def kind_of(command: str) -> str:
    """A command's run kind: `audit-many` → `audit_many` (kinds are identifiers; commands use hyphens)."""
    return command.replace("-", "_")


def command_of(kind: str) -> str:
    return kind.replace("_", "-")


def kind_module(kind: str) -> ModuleType:
    return importlib.import_module(f"kdcore.cli.{kind_of(kind)}")


def build_parser() -> argparse.ArgumentParser:
    # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
    from kdcore.cli import jobs

    ap = argparse.ArgumentParser(
        prog="kdcore",
        description="Audit image classifiers for backdoors: distil → detoxify → fine-tune (Yoshida & Fujino 2020).",
    )
    ap.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a budget against hostile input, repeatable (e.g. max_archive_bytes=8GiB, "
        "sandbox_timeout_s=60, job_timeout_audit_s=36000); the limits and their defaults: "
        + ", ".join(f"{f.name}={getattr(Limits(), f.name)}" for f in dataclasses.fields(Limits)),
    )
    sub = ap.add_subparsers(dest="command", required=True)
    for kind in COMMANDS:
        module = kind_module(kind)
        p = sub.add_parser(kind, help=module.HELP, **getattr(module, "PARSER", {}))
        module.add_arguments(p)
    jobs.add_parsers(sub)
    return ap


def resolve_config(argv: Sequence[str]):
    """The config a run command line resolves to, without running it."""
    a = build_parser().parse_args(argv)
    return kind_module(a.command).config_from_args(a)


def _default_out(kind: str) -> Path:
    return data_home() / "runs" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_command(a: argparse.Namespace, bar: BarProgress) -> int:
    import torch  # heavy: torch, only for the command that needs it

    # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
    from kdcore.runs import KINDS

    module = kind_module(a.command)
    cfg = module.config_from_args(a)
    check = getattr(cfg, "check_inputs", None)
    if check is not None:
        check()
    torch.manual_seed(getattr(module, "seed", lambda c: c.seed)(cfg))
    out = a.out or _default_out(a.command)
    report = KINDS[kind_of(a.command)][1](cfg, out, bar)
    bar.close()
    print(module.summary(cfg, report))
    print(f"\nRun directory: {out}  ({getattr(module, 'OUTPUTS', OUTPUTS)})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    bar = BarProgress(enabled=False)
    try:
        a = build_parser().parse_args(argv)
        # For this process and every one it starts (a worker's jobs, sandboxed readers): onnxruntime's
        # telemetry off and torch's compile cache in the data directory (`kdcore.third_party`).
        os.environ.update(process_env(data_home(getattr(a, "data_dir", None))))
        if a.limit:
            limits.use(limits.with_overrides(limits.current(), a.limit))
        bar.enabled = not getattr(a, "no_progress", True)
        if getattr(a, "trust_code", False):
            # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
            from kdcore.models.plugins import trust_code

            trust_code()  # this process and the workers and sandboxed readers it starts
        if a.command in ("jobs", "worker"):
            # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
            from kdcore.cli.jobs import jobs_main, worker_main

            return jobs_main(a) if a.command == "jobs" else worker_main(a)
        return run_command(a, bar)
    except KDCoreError as e:
        bar.close()
        msg = " ".join(str(e).split())
        print(f"kdcore: error: {msg}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        bar.close()
        print("kdcore: interrupted", file=sys.stderr)
        return 130
