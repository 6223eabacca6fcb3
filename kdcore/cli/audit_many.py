"""`kdcore audit-many DIR_OR_LIST`: a blind audit of every model in a folder or a list, on shared data,
and one table sorted by P(backdoor) (flags from AuditConfig, shared by every model)."""

from __future__ import annotations

import argparse

from kdcore.cli.flags import add_config_flags, add_run_args, config_file, given, trigger_arg, trigger_of, trust_arg
from kdcore.config import from_dict, merge
from kdcore.runs.audit_many import AuditManyConfig, find_models
from kdcore.runs.configs import AuditConfig

HELP = "a blind audit of every model in a folder or a list, on shared data: one table sorted by P(backdoor)"
CACHE_KEY = ()
OUTPUTS = "models.csv, report.json, parts/: one audit per model"
MAPPINGS = ("arch_kwargs", "neural_cleanse")  # AuditConfig's mappings that take a JSON flag


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        metavar="DIR_OR_LIST",
        help="a folder of models (every model file, and every folder with config.json + model.safetensors) "
        "or a text file listing one model path per line (relative to the file; # starts a comment)",
    )
    add_run_args(p)
    trust_arg(p)
    trigger_arg(p, "a known trigger, as for `kdcore audit`: measured (asr), never used by the verdict")
    add_config_flags(p, AuditConfig, dest="audit.", skip=("model", "blind", "device"), objects=MAPPINGS)
    add_config_flags(p, AuditManyConfig, only=("device",))


def config_from_args(a: argparse.Namespace) -> AuditManyConfig:
    """The models of DIR_OR_LIST, then the --config file, then the flags."""
    d = merge(config_file(a.config), given(a))
    d["models"] = find_models(a.source)
    trigger = trigger_of(a)
    if trigger:
        d.setdefault("audit", {})["trigger"] = trigger
    return from_dict(AuditManyConfig, d)


def seed(cfg: AuditManyConfig) -> int:
    return int(cfg.audit.get("seed", 0))


def summary(cfg: AuditManyConfig, report: dict) -> str:
    return report["table"]
