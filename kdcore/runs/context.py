"""Rebuild what a finished run worked on (models, data, trigger) from its run directory.

Used by the `refine` run kind (fine-tune again with reviewer verdicts) and by the dashboard's
evidence views. Everything is rebuilt from `config.json` and the saved models, so a run
directory is self-describing. The user's own files (an audit's model and image sets) are read
through `kdcore.sandbox`; the models kdcore saved itself (`models/*.safetensors`) directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdcore import sandbox
from kdcore.config import from_dict
from kdcore.data.imageset import ImageSet
from kdcore.device import resolve_device
from kdcore.errors import InputError
from kdcore.io import read_json
from kdcore.models.loading import load_model
from kdcore.models.spec import ModelSpec
from kdcore.runs.common import labelled_sets
from kdcore.triggers import Trigger


@dataclass(frozen=True)
class RunContext:
    run_dir: Path
    kind: str
    config: dict
    spec: ModelSpec
    teacher: nn.Module
    train: ImageSet | None
    test: ImageSet | None
    trigger: Trigger | None
    poison_idx: torch.Tensor | None

    def model(self, name: str, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelSpec]:
        """`teacher`, or a model saved in the run (`student`, `finetuned`)."""
        if name == "teacher":
            return self.teacher, self.spec
        path = self.run_dir / "models" / f"{name}.safetensors"
        if not path.exists():
            raise InputError(f"This run has no {name} model ({path} is missing)")
        return load_model(path, None, device)

    def available_models(self) -> list[str]:
        names = ["teacher"]
        names += [n for n in ("student", "finetuned") if (self.run_dir / "models" / f"{n}.safetensors").exists()]
        return names


def load_context(
    run_dir: str | Path, device: torch.device | str = "cpu", with_data: bool = True, with_train: bool = True
) -> RunContext:
    """`with_train` False: an audit's training set is not decoded (a page that measures on the test set only)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise InputError(f"{run_dir} is not a kdcore run directory (no config.json)")
    config = read_json(cfg_path)
    kind = config.get("kind")
    body = {k: v for k, v in config.items() if k != "kind"}
    device = resolve_device(str(device))
    if kind == "refine":
        return load_context(body["source_run"], device, with_data, with_train)
    if kind == "demo":
        from kdcore.paths import cache_dir
        from kdcore.pipeline import train_stage
        from kdcore.runs.demo import SPEC, DemoConfig, build_demo_data
        from kdcore.stages import Stages

        cfg = from_dict(DemoConfig, body)
        data = build_demo_data(cfg)
        teacher, _ = train_stage(
            Stages(cache_dir(cfg.cache_dir or None) / "demo"),
            "teacher",
            SPEC,
            data.poisoned,
            cfg.teacher,
            device,
            cfg.seed,
            lambda *a: None,
        )
        return RunContext(
            run_dir, kind, config, SPEC, teacher, data.poisoned, data.test, cfg.trigger_value, data.poison_idx
        )
    if kind == "audit":
        from kdcore.runs.audit import AuditConfig

        cfg = from_dict(AuditConfig, body)
        report = read_json(run_dir / "report.json") if (run_dir / "report.json").exists() else {}
        spec = ModelSpec.from_dict(report["model"]["spec"]) if report.get("model") else cfg.model_spec()
        teacher, spec = sandbox.load_model(cfg.model, spec, device)
        train_path = cfg.train if with_train else ""
        train, test, _, spec = labelled_sets(spec, train_path, cfg.test) if with_data else (None, None, None, spec)
        trigger = Trigger.from_dict(cfg.trigger) if cfg.trigger else None
        return RunContext(run_dir, kind, config, spec, teacher, train, test, trigger, None)
    raise InputError(f"Run kind {kind!r} in {run_dir} has no models to inspect (expected demo, audit or refine)")
