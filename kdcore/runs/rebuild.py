"""Rebuild what a finished run worked on (models, data, trigger) from its run directory.

Used by the `refine` run kind (fine-tune again with reviewer verdicts) and by the dashboard's
evidence views. Everything is rebuilt from `config.json` and the saved models, so a run
directory is self-describing. The user's own files (an audit's model and image sets) are read
through `kdcore.sandbox`; the models kdcore saved itself (`models/*.safetensors`) directly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdcore import sandbox
from kdcore.config import from_dict
from kdcore.device import resolve_device
from kdcore.errors import InputError
from kdcore.io import read_json
from kdcore.models.spec import ModelSpec
from kdcore.run_context import RunContext
from kdcore.runs.common import labelled_sets
from kdcore.runs.configs import AuditConfig, DemoConfig
from kdcore.runs.scenario import SPEC, DemoData, build_demo_data, suspect
from kdcore.triggers import Trigger


def load_context(
    run_dir: str | Path, device: torch.device | str = "cpu", with_data: bool = True, with_train: bool = True
) -> RunContext:
    """The RunContext of a finished demo or audit run (a refine run: its source run's). `with_train`
    False: an audit's training set is not decoded (a page that measures on the test set only)."""
    run_dir = Path(run_dir)
    config = _config(run_dir)
    kind = config.get("kind")
    body = {k: v for k, v in config.items() if k != "kind"}
    device = resolve_device(str(device))
    if kind == "refine":
        return load_context(body["source_run"], device, with_data, with_train)
    if kind == "demo":
        cfg = from_dict(DemoConfig, body)
        data = build_demo_data(cfg)
        teacher, train, poison_idx = suspect(cfg, data, device)
        return RunContext(run_dir, kind, config, SPEC, teacher, train, data.test, cfg.trigger_value, poison_idx)
    if kind == "audit":
        cfg = from_dict(AuditConfig, body)
        report = read_json(run_dir / "report.json") if (run_dir / "report.json").exists() else {}
        spec = ModelSpec.from_dict(report["model"]["spec"]) if report.get("model") else cfg.model_spec()
        teacher, spec = sandbox.load_model(cfg.model, spec, device)
        train_path = cfg.train if with_train else ""
        train, test, _, spec = labelled_sets(spec, train_path, cfg.test) if with_data else (None, None, None, spec)
        trigger = Trigger.from_dict(cfg.trigger) if cfg.trigger else None
        return RunContext(run_dir, kind, config, spec, teacher, train, test, trigger, None)
    raise InputError(f"Run kind {kind!r} in {run_dir} has no models to inspect (expected demo, audit or refine)")


def demo_data(run_dir: str | Path) -> DemoData:
    """The data sets of a finished demo run, drawn again from its config: the clean training set
    beside its poisoned copy (the same images before and after the attacker's stamp), the poison
    indices and the test set. No model is loaded."""
    config = _config(Path(run_dir))
    if config.get("kind") != "demo":
        raise InputError(f"{run_dir} is a {config.get('kind')} run, not the built-in demo; open a demo run")
    return build_demo_data(from_dict(DemoConfig, {k: v for k, v in config.items() if k != "kind"}))


def _config(run_dir: Path) -> dict:
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise InputError(f"{run_dir} is not a kdcore run directory (no config.json)")
    return read_json(cfg_path)
