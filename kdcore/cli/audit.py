"""`kdcore audit`: audit your own model on your own images (flags from AuditConfig)."""

from __future__ import annotations

import argparse

from kdcore.cli.flags import (
    add_config_flags,
    add_run_args,
    config_file,
    given,
    parsed_trigger,
    trigger_arg,
    trust_arg,
)
from kdcore.config import from_dict, merge
from kdcore.runs.audit import AuditConfig

HELP = "audit your own model on your own images"
TRIGGER_HELP = "known trigger: badnets:target=7,size=3 | JSON | file.json"
CACHE_KEY = ()
MAPPINGS = ("arch_kwargs",)  # AuditConfig's mappings that take a JSON flag


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_args(p)
    trust_arg(p)
    trigger_arg(p, TRIGGER_HELP)
    add_config_flags(p, AuditConfig, objects=MAPPINGS)


def config_from_args(a: argparse.Namespace) -> AuditConfig:
    """The --config file, then the flags."""
    d = merge(config_file(a.config), given(a))
    if a.trigger:
        d["trigger"] = parsed_trigger(a.trigger)
    return from_dict(AuditConfig, d)


def summary(cfg: AuditConfig, report: dict) -> str:
    from kdcore.tables import report_table

    text = report_table(report)
    if not cfg.trigger:
        text += "\nNo --trigger given: asr and poison_acc were not measured."
    return text
