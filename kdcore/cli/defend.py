"""`kdcore defend METHOD`: run one registered defense on a finished run, the demo, or your model.

Flags come from DefendConfig (top level), AuditConfig's inputs (`--model`, `--unlabeled`, ...) and
DemoConfig's data settings (with --demo); method settings are `--param key=value` / `--params JSON`.
"""

from __future__ import annotations

import argparse
import json

from kdcore.cli import audit as audit_cli
from kdcore.cli import demo as demo_cli
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
from kdcore.errors import ConfigError
from kdcore.runs.configs import AuditConfig, DemoConfig
from kdcore.runs.defend import DefendConfig

HELP = "run another defense (BCU, ℓ∞ pruning, Neural Cleanse, ...) on a run, the demo, or your model"
CACHE_KEY = ("demo", "cache_dir")
AUDIT_INPUTS = tuple(
    "model arch num_classes arch_file arch_file_sha256 arch_kwargs layers input_shape mean std class_names "
    "unlabeled train test max_unlabeled".split()
)
DEMO_INPUTS = ("data_dir", "cache_dir", "n_poison")
PARSER = {
    "description": "Run one registered defense on a suspect model. Inputs come from exactly one of: "
    "--run (a finished demo or audit), --demo (the built-in scenario), or audit-style --model/--unlabeled/... "
    "Method settings: --param key=value (repeatable; values are JSON, e.g. --param epochs=5 "
    "--param ratios=[0.01,0.1]) or --params JSON.",
    "formatter_class": argparse.RawDescriptionHelpFormatter,
}


def epilog() -> str:
    from kdcore.defenses import DEFENSES  # heavy, and a plugin registry: every defense (torch, sklearn)

    lines = ["methods:"]
    width = max(len(c.family) for c in DEFENSES.values())
    for name, cls in sorted(DEFENSES.items()):
        needs = ", ".join(cls.needs) or "—"
        tag = "  [needs labelled clean data]" if cls.needs_labels else ""
        lines.append(f"  {name:<22} {cls.family:<{width}} needs: {needs}{tag}")
        lines.append(f"  {'':<22} {cls.summary}")
    lines += [
        "",
        "examples:",
        "  kdcore defend neural-cleanse --demo --quick",
        "  kdcore defend bcu --run kdaudit-data/runs/demo-20261122-101500 --param epochs=10",
        "  kdcore defend fine-pruning --model m.safetensors --unlabeled u.zip --test t.zip --clean-labeled c.zip",
    ]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = epilog()
    p.add_argument("method", metavar="METHOD", help="the defense (listed below)")
    add_run_args(p, quick="with --demo: the quick setup")
    trust_arg(p)
    add_config_flags(p, DefendConfig, skip=("method",), names={"source_run": ("--run",)})
    p.add_argument("--param", action="append", default=[], help="a method setting, key=value (JSON value)")
    p.add_argument("--params", help="all method settings as one JSON object")
    g = p.add_argument_group("with --demo: the built-in scenario")
    g.add_argument("--demo", action="store_true", help="the built-in Fashion-MNIST scenario")
    trigger_arg(g, demo_cli.attack_help() + "; with --model: " + audit_cli.TRIGGER_HELP)
    add_config_flags(g, DemoConfig, dest="demo.", only=DEMO_INPUTS, quick=DemoConfig.preset(quick=True))
    g = p.add_argument_group("or your model, as for `kdcore audit`")
    add_config_flags(g, AuditConfig, dest="audit.", only=AUDIT_INPUTS, objects=audit_cli.MAPPINGS)


def method_params(a: argparse.Namespace) -> dict:
    params: dict = {}
    if a.params:
        try:
            params = json.loads(a.params)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--params is not valid JSON: {e}") from e
        if not isinstance(params, dict):
            raise ConfigError(f"--params should be a JSON object; got {a.params!r}")
    for item in a.param:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--param {item!r} should look like key=value")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word, e.g. --param schedule=uniform
        params[key.strip()] = value
    return params


def config_from_args(a: argparse.Namespace) -> DefendConfig:
    """The --config file, then the flags; with --demo the scenario is the quick preset (with
    --quick), then the file's "demo", then the flags (--seed seeds the scenario too)."""
    flags = given(a)
    demo, audit = flags.pop("demo", {}), flags.pop("audit", {})
    d = merge(config_file(a.config), flags)
    d["method"] = a.method
    params = method_params(a)
    if params:
        d["params"] = merge(d.get("params", {}), params)
    if a.demo:
        if a.trigger:
            demo["trigger"] = parsed_trigger(a.trigger)
        if "seed" in flags:
            demo["seed"] = flags["seed"]
        d["demo"] = from_dict(DemoConfig, merge(d.get("demo") or {}, demo), base=DemoConfig.preset(a.quick))
    elif audit:
        if a.trigger:
            audit["trigger"] = parsed_trigger(a.trigger)
        d["audit"] = merge(d.get("audit") or {}, audit)
    elif a.trigger or demo.get("n_poison"):
        raise ConfigError(
            "--trigger and --n-poison go with --demo (the attack to build) or --model (the known trigger); "
            "a --run brings its own"
        )
    return from_dict(DefendConfig, d)


def summary(cfg: DefendConfig, report: dict) -> str:
    # lazy: the engine and torch load only when a command runs (`kdcore --help` stays light)
    from kdcore.tables import defense_table

    return defense_table(report)
