"""`kdcore demo`: the built-in Fashion-MNIST backdoor scenario, end to end (flags from DemoConfig)."""

from __future__ import annotations

import argparse

from kdcore.cli.flags import add_config_flags, add_run_args, config_file, given, parsed_trigger, trigger_arg
from kdcore.config import from_dict, merge
from kdcore.runs.configs import DemoConfig

HELP = "built-in Fashion-MNIST backdoor scenario, end to end"
CACHE_KEY = ("cache_dir",)  # where a queued job's trained teachers go (the job store's cache)


def attack_help() -> str:
    from kdcore.triggers import TRIGGERS  # a plugin registry (every trigger kind; torch)

    return f"the attack ({', '.join(sorted(TRIGGERS))}), e.g. sig:target=7,delta=20 (default: BadNets 3×3, target 7)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_args(p, quick="small and fast (< 3 min on 2 CPU cores)")
    trigger_arg(p, attack_help())
    add_config_flags(p, DemoConfig, skip=("quick",), quick=DemoConfig.preset(quick=True))


def config_from_args(a: argparse.Namespace) -> DemoConfig:
    """The quick preset (with --quick), then the --config file, then the flags."""
    d = merge(config_file(a.config), given(a))
    if a.trigger:
        d["trigger"] = parsed_trigger(a.trigger)
    return from_dict(DemoConfig, d, base=DemoConfig.preset(a.quick))


def summary(cfg: DemoConfig, report: dict) -> str:
    # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
    from kdcore.tables import report_table
    from kdcore.verdict.rule import with_verdict

    return with_verdict(report_table(report), report)
