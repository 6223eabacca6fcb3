"""`kdcore audit`: audit your own model on your own images (flags from AuditConfig)."""

from __future__ import annotations

import argparse

from kdcore.cli.flags import (
    add_config_flags,
    add_run_args,
    config_file,
    given,
    trigger_arg,
    trigger_of,
    triggered_test_args,
    trust_arg,
)
from kdcore.config import from_dict, merge
from kdcore.runs.configs import AuditConfig

HELP = "audit your own model on your own images"
TRIGGER_HELP = (
    "known trigger: badnets:target=7,size=3 | patch:image=p.png[,mask=m.png][,location=top-left|x=,y=]"
    "[,alpha=1],target=7 | blend:image=p.png,alpha=0.2,target=7 | JSON | file.json"
)
CACHE_KEY = ()
MAPPINGS = ("arch_kwargs",)  # AuditConfig's mappings that take a JSON flag


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_args(p)
    trust_arg(p)
    trigger_arg(p, TRIGGER_HELP)
    triggered_test_args(p)
    add_config_flags(p, AuditConfig, objects=MAPPINGS)


def config_from_args(a: argparse.Namespace) -> AuditConfig:
    """The --config file, then the flags."""
    d = merge(config_file(a.config), given(a))
    trigger = trigger_of(a)
    if trigger:
        d["trigger"] = trigger
    return from_dict(AuditConfig, d)


def summary(cfg: AuditConfig, report: dict) -> str:
    # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
    from kdcore.tables import report_table
    from kdcore.verdict.rule import with_verdict

    return with_verdict(report_table(report), report)  # the report's notes say what was not measured
