"""`kdcore refine`: fine-tune a finished audit's student again with reviewed verdicts (flags from
RefineConfig; the verdicts come with --config, as the dashboard's review writes them)."""

from __future__ import annotations

import argparse
import json

from kdcore.cli.flags import add_config_flags, add_run_args, config_file, given
from kdcore.config import from_dict, merge
from kdcore.runs.refine import RefineConfig

HELP = "fine-tune an audit's student again with reviewed verdicts (--config holds the verdicts)"
CACHE_KEY = ()


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_args(p)
    add_config_flags(p, RefineConfig, names={"source_run": ("--run",)})


def config_from_args(a: argparse.Namespace) -> RefineConfig:
    """The --config file, then the flags."""
    return from_dict(RefineConfig, merge(config_file(a.config), given(a)))


def summary(cfg: RefineConfig, report: dict) -> str:
    evals = {k: v for k, v in report.items() if isinstance(v, dict) and "clean_acc" in v}
    return json.dumps(evals, indent=2)
