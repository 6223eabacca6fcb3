"""Audit of a user's model on a user's images (folders or zip archives)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from kdcore.config import setting
from kdcore.errors import ConfigError, InputError
from kdcore.models.registry import DEFAULT_INPUT
from kdcore.models.spec import ModelSpec
from kdcore.pipeline import KDConfig, run_kd_pipeline
from kdcore.progress import ProgressFn, no_progress
from kdcore.runs.common import environment, labelled_sets, start_run, write_report
from kdcore.sandbox import load_model, load_unlabeled, read_spec  # untrusted input: in a child process
from kdcore.stages import Stages
from kdcore.triggers import Trigger


@dataclass(frozen=True)
class AuditConfig:
    model: str = setting("", ".safetensors (preferred) or .pt/.pth state_dict")
    arch: str = setting("", 'registry name; "" = read from the model\'s spec')
    num_classes: int = setting(0, "0 = read from the model's spec")
    input_shape: tuple[int, ...] = setting((), "(C, H, W); () = the spec's or the architecture's default")
    mean: tuple[float, ...] = setting((), "per-channel mean of the normalisation, e.g. 0.5 or 0.49,0.48,0.45")
    std: tuple[float, ...] = setting((), "per-channel std of the normalisation")
    class_names: tuple[str, ...] = setting((), "class names in output order")
    unlabeled: str = setting("", "folder or zip of clean images, any layout")
    train: str = setting("", "folder or zip, one sub-folder per class: enables detox + fine-tuning")
    test: str = setting("", "folder or zip, one sub-folder per class: enables clean_acc / poison_acc / asr")
    trigger: dict | None = setting(None, "a known trigger (Trigger.to_dict()): enables poison_acc and asr")
    max_unlabeled: int = setting(0, "use at most this many unlabelled images; 0 = all", min=0)
    seed: int = setting(0, "random seed")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    kd: KDConfig = setting(factory=KDConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("An audit needs --model (a .safetensors or .pt state_dict)")
        if not self.unlabeled:
            raise ConfigError("An audit needs --unlabeled (a folder or zip of clean images)")
        if bool(self.arch) != bool(self.num_classes):
            raise ConfigError("Give --arch and --num-classes together (or neither, for a kdcore-saved model)")
        if self.trigger is not None:
            Trigger.from_dict(self.trigger)
            if self.trigger.get("kind") == "triggered" and not self.test:
                raise ConfigError("A triggered test set is measured next to the clean test set: give --test too")
        if self.max_unlabeled < 0:
            raise ConfigError(f"max_unlabeled must be ≥ 0; got {self.max_unlabeled}")

    def check_inputs(self) -> None:
        """Paths exist (checked when a job is submitted, before anything is queued)."""
        for name in ("model", "unlabeled", "train", "test"):
            p = getattr(self, name)
            if p and not Path(p).exists():
                raise InputError(f"--{name} {p} does not exist")

    def model_spec(self) -> ModelSpec:
        stored = read_spec(self.model) if Path(self.model).exists() else None
        if not self.arch:
            if stored is None:
                raise ConfigError(f"{Path(self.model).name} carries no spec; give --arch and --num-classes")
            spec = stored
        else:
            shape = self.input_shape or (
                stored.input_shape
                if stored and stored.arch == self.arch
                else DEFAULT_INPUT.get(self.arch, (3, 224, 224))
            )
            spec = ModelSpec(self.arch, self.num_classes, tuple(shape))
        changes = {
            k: v
            for k, v in (
                ("input_shape", self.input_shape),
                ("mean", self.mean),
                ("std", self.std),
                ("class_names", self.class_names),
            )
            if v
        }
        return spec.replace(**changes) if changes else spec


def run_audit(cfg: AuditConfig, run_dir: str | Path, on_progress: ProgressFn = no_progress) -> dict:
    with start_run(run_dir, "audit", cfg, cfg.device) as (run_dir, device, resolved, t0):
        on_progress("prepare", 0, 4, {"message": "loading model"})
        teacher, spec = load_model(cfg.model, cfg.model_spec(), device)
        trigger = Trigger.from_dict(cfg.trigger) if cfg.trigger else None
        if trigger is not None:
            trigger.check_input(spec.input_shape)  # a patch that does not fit fails now, not after training
        on_progress("prepare", 1, 4, {"message": "loading images"})
        unlabeled = load_unlabeled(cfg.unlabeled, spec.input_shape, name="unlabeled")
        if cfg.max_unlabeled and len(unlabeled) > cfg.max_unlabeled:
            unlabeled = unlabeled.subset(list(range(cfg.max_unlabeled)))
        on_progress("prepare", 2, 4, {"message": "loading labelled images"})
        train, test, _, spec = labelled_sets(spec, cfg.train, cfg.test)
        on_progress("prepare", 4, 4, {})
        out = run_kd_pipeline(
            teacher,
            spec,
            unlabeled,
            cfg.kd,
            Stages(run_dir / "stages"),
            device,
            train=train,
            test=test,
            trigger=trigger,
            seed=cfg.seed,
            on_progress=on_progress,
            run_dir=run_dir,
        )
        report = out.report()
        report.update(
            kind="audit",
            config=resolved,
            **environment(device),
            model={"spec": spec.to_dict(), "parameters": sum(p.numel() for p in teacher.parameters())},
            data={
                name: None
                if d is None
                else {"images": len(d), "skipped": len(d.skipped), "skipped_files": list(d.skipped[:50])}
                for name, d in (("unlabeled", unlabeled), ("train", train), ("test", test))
            },
            wall_s=round(time.perf_counter() - t0, 2),
        )
        report["data"]["trigger"] = trigger.describe() if trigger else None
        report["notes"] += trigger.notes() if trigger else []
        write_report(run_dir, report)
        return report
