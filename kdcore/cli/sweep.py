"""`kdcore sweep`: the clean-image budget sweep, under attack and without (Table 5; flags from SweepConfig)."""

from __future__ import annotations

import argparse

from kdcore.cli.flags import ALIASES, add_config_flags, add_run_args, config_file, flag_name, given
from kdcore.config import from_dict, merge, settings
from kdcore.runs.configs import DemoConfig
from kdcore.runs.sweep import SweepConfig

HELP = "clean-image budget sweep, under attack and without (Table 5)"
CACHE_KEY = ("setup", "cache_dir")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_args(p, quick="the quick demo setup with small budgets")
    quick = SweepConfig.preset(quick=True)
    add_config_flags(
        p,
        SweepConfig,
        skip=("setup.quick", "setup.n_clean", "setup.scenario", "setup.blind", "gather"),
        quick=quick,
        names=_unprefixed(),
    )


def _unprefixed() -> dict[str, tuple[str, ...]]:
    """The setup's flags read as the demo's (`--teacher-epochs`, not `--setup-teacher-epochs`)."""
    return {f"setup.{s.name}": (*ALIASES.get(s.name, ()), flag_name(s.name)) for s in settings(DemoConfig)}


def config_from_args(a: argparse.Namespace) -> SweepConfig:
    """The quick preset (with --quick), then the --config file, then the flags."""
    return from_dict(SweepConfig, merge(config_file(a.config), given(a)), base=SweepConfig.preset(a.quick))


def seed(cfg: SweepConfig) -> int:
    return cfg.setup.seed


def summary(cfg: SweepConfig, report: dict) -> str:
    return report["table"]
