"""The seed-000 defense end to end (Yoshida & Fujino, AISec 2020), stage by stage:

    distill  → student from the teacher on unlabelled clean images (kdcore.distill)
    detox    → poison-data candidates = teacher/student disagreements (kdcore.detox)
    finetune → the student fine-tuned on the detoxified labelled set (kdcore.train.fit)
    evaluate → clean_acc / poison_acc / asr and confusion matrices of every model (kdcore.evaluate)

Each stage's outputs are cached by content (`kdcore.stages`), so re-running with the same
inputs, or retrying an interrupted job, skips what has already finished. `kd_stages` is the
method itself (steps 1–3); the demo and audit runs call it through `run_kd_pipeline`, the
`defend` run kind through the registered defense `kdcore.defenses.kd.KD`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdcore.candidates import FILE_NAME, write_candidates
from kdcore.config import setting
from kdcore.data.imageset import ImageSet
from kdcore.detox import DetoxResult, DetoxTable, detoxify
from kdcore.distill import DistillConfig, distill
from kdcore.evaluate import EvalResult, evaluate_model
from kdcore.io import atomic_write_text
from kdcore.models.loading import load_model, save_model
from kdcore.models.registry import build_model, student_spec
from kdcore.models.spec import ModelSpec
from kdcore.progress import ProgressFn, for_stage, no_progress
from kdcore.report import ROLES
from kdcore.stages import StageOutput, Stages, fingerprint
from kdcore.train import TrainConfig, fit, seeded_model
from kdcore.triggers.base import Trigger

log = logging.getLogger("kdcore")


@dataclass(frozen=True)
class KDConfig:
    """Hyperparameters of the defense (seed 000 steps 1–3)."""

    distill: DistillConfig = setting(factory=DistillConfig)
    finetune: TrainConfig = setting(factory=lambda: TrainConfig(epochs=5, lr=1e-4, val_fraction=0.1, patience=2))
    student_arch: str = setting("", '"" = the teacher\'s architecture, freshly initialised')


@dataclass
class PipelineOutput:
    """What the pipeline produced; `report()` shapes it for report.json."""

    evals: dict[str, EvalResult] = field(default_factory=dict)
    detox: DetoxResult | None = None
    distill: dict | None = None
    finetune: dict | None = None
    stages: dict[str, StageOutput] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    models: dict[str, tuple[nn.Module, ModelSpec]] = field(default_factory=dict)  # by role (kd_stages), not in report()
    table: DetoxTable | None = None  # the detox table (with a training set), not in report()

    def timings(self) -> dict[str, float]:
        """Seconds per stage (a reused stage reports the time it took when it ran)."""
        return {
            k: round(s.meta.get("seconds", s.seconds) if s.reused else s.seconds, 3) for k, s in self.stages.items()
        }

    def report(self) -> dict:
        unknown = set(self.evals) - set(ROLES)
        if unknown:
            raise ValueError(f"Model role(s) {sorted(unknown)} are not in kdcore.report.ROLES")
        r: dict = {name: ev.to_dict() for name, ev in self.evals.items()}
        for name in ("teacher", "student", "finetuned"):
            r.setdefault(name, None)
        r["detox"] = self.detox.to_dict() if self.detox else None
        r["distill"] = self.distill
        r["finetune"] = self.finetune
        r["timings"] = self.timings()
        r["stages"] = {
            k: {"reused": s.reused, "seconds": round(s.seconds, 3), "dir": str(s.dir)} for k, s in self.stages.items()
        }
        r["notes"] = list(self.notes)
        return r


def timed_stage(stages: Stages, name: str, key: str, fn) -> StageOutput:
    """Run a stage and record its own wall time in its meta (so reuse can report it)."""

    def wrapped(folder: Path) -> dict:
        t0 = time.perf_counter()
        meta = fn(folder)
        meta["seconds"] = time.perf_counter() - t0
        return meta

    return stages.run(name, key, wrapped)


def train_stage(
    stages: Stages,
    name: str,
    spec: ModelSpec,
    data: ImageSet,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    on_progress: ProgressFn,
) -> tuple[nn.Module, StageOutput]:
    """Supervised training from scratch as a cached stage (the demo's baseline and teacher)."""
    key = fingerprint(name, spec, data, cfg, seed)

    def run(folder: Path) -> dict:
        model = seeded_model(lambda: build_model(spec), seed)
        model, hist = fit(model, spec, data, cfg, device, seed, for_stage(on_progress, name))
        save_model(model, spec, folder / "model.safetensors")
        return {"history": hist}

    out = timed_stage(stages, name, key, run)
    model, _ = load_model(out.dir / "model.safetensors", spec, device)
    return model, out


@dataclass
class KDModels:
    """Steps 1–3 of the method: its models (by role, with their specs) and the detox table."""

    models: dict[str, tuple[nn.Module, ModelSpec]]  # teacher, student and (with a training set) finetuned
    table: DetoxTable | None  # one row per training sample (None without a training set)
    kept: ImageSet | None  # the detoxified training set


def kd_stages(
    teacher: nn.Module,
    spec: ModelSpec,
    unlabeled: ImageSet,
    cfg: KDConfig,
    stages: Stages,
    device: torch.device,
    out: PipelineOutput,
    *,
    train: ImageSet | None = None,
    poison_idx: torch.Tensor | None = None,
    seed: int = 0,
    on_progress: ProgressFn = no_progress,
) -> KDModels:
    """Distil → detoxify → fine-tune, each a cached stage; records stages, detox and notes in `out`.
    `poison_idx` only scores the detox (precision / recall); the method never sees it."""
    teacher = teacher.to(device).eval()
    s_spec = student_spec(spec, cfg.student_arch)
    t_key = fingerprint(teacher)

    # Step 1: distillation on unlabelled clean images.
    d_key = fingerprint("distill", t_key, s_spec, unlabeled.images, cfg.distill, seed)

    def run_distill(folder: Path) -> dict:
        student = seeded_model(lambda: build_model(s_spec), seed + 1)
        student, res = distill(
            teacher, student, spec, unlabeled, cfg.distill, device, seed, for_stage(on_progress, "distill"), s_spec
        )
        save_model(student, s_spec, folder / "student.safetensors")
        return res.to_dict()

    st = timed_stage(stages, "distill", d_key, run_distill)
    out.stages["distill"], out.distill = st, st.meta
    student, _ = load_model(st.dir / "student.safetensors", s_spec, device)
    models: dict[str, tuple[nn.Module, ModelSpec]] = {"teacher": (teacher, spec), "student": (student, s_spec)}

    # Steps 2–3: detoxify the labelled training set and fine-tune on what is left.
    if train is None:
        out.notes.append("No labelled training set given: no detoxification and no fine-tuning.")
        return KDModels(models, None, None)
    on_progress("detox", 0, 1, {})
    detox, table, kept = detoxify(teacher, student, spec, train, device, poison_idx, s_spec)
    on_progress("detox", 1, 1, {"flagged": detox.flagged})
    out.detox = detox
    f_key = fingerprint("finetune", d_key, kept, cfg.finetune, seed)

    def run_finetune(folder: Path) -> dict:
        model, _ = load_model(st.dir / "student.safetensors", s_spec, device)
        model, hist = fit(model, s_spec, kept, cfg.finetune, device, seed, for_stage(on_progress, "finetune"))
        save_model(model, s_spec, folder / "finetuned.safetensors")
        return {"history": hist}

    ft = timed_stage(stages, "finetune", f_key, run_finetune)
    out.stages["finetune"], out.finetune = ft, ft.meta.get("history")
    finetuned, _ = load_model(ft.dir / "finetuned.safetensors", s_spec, device)
    models["finetuned"] = (finetuned, s_spec)
    return KDModels(models, table, kept)


def run_kd_pipeline(
    teacher: nn.Module,
    spec: ModelSpec,
    unlabeled: ImageSet,
    cfg: KDConfig,
    stages: Stages,
    device: torch.device,
    *,
    train: ImageSet | None = None,
    test: ImageSet | None = None,
    trigger: Trigger | None = None,
    poison_idx: torch.Tensor | None = None,
    references: dict[str, nn.Module] | None = None,
    seed: int = 0,
    on_progress: ProgressFn = no_progress,
    run_dir: Path | None = None,
) -> PipelineOutput:
    """Distil → detoxify → fine-tune (`kd_stages`) → evaluate. Writes models, candidates.csv and
    confusion matrices into `run_dir` when given. `references` (e.g. the demo's baseline) are evaluated too."""
    out = PipelineOutput()
    kd = kd_stages(
        teacher, spec, unlabeled, cfg, stages, device, out,
        train=train, poison_idx=poison_idx, seed=seed, on_progress=on_progress,
    )  # fmt: skip
    models = out.models = kd.models
    out.table = kd.table
    if kd.table is not None and run_dir is not None:
        write_candidates(run_dir / FILE_NAME, kd.table.rows(spec.names))

    # Step 4: evaluation of every model on clean and triggered test images.
    if test is None:
        out.notes.append("No labelled test set given: no clean_acc, poison_acc or asr.")
    else:
        if trigger is None:
            out.notes.append("No trigger given: poison_acc and asr were not measured.")
        else:
            trigger.check_classes(spec.num_classes)
        all_models = {**{k: (m, spec) for k, m in (references or {}).items()}, **models}
        for i, (name, (model, mspec)) in enumerate(all_models.items()):
            on_progress("evaluate", i, len(all_models), {"model": name})
            out.evals[name] = evaluate_model(model, mspec, test, device, trigger)
        on_progress("evaluate", len(all_models), len(all_models), {})

    if run_dir is not None:
        write_models(run_dir, {k: v for k, v in models.items() if k != "teacher"})
        write_confusions(run_dir, out.evals, spec.names)
    return out


def write_models(run_dir: Path, models: dict[str, tuple[nn.Module, ModelSpec]]) -> None:
    for name, (model, spec) in models.items():
        save_model(model, spec, run_dir / "models" / f"{name}.safetensors")


def write_confusions(run_dir: Path, evals: dict[str, EvalResult], names: tuple[str, ...]) -> None:
    for model_name, ev in evals.items():
        for which, cm in (("clean", ev.confusion_clean), ("poison", ev.confusion_poison)):
            if not cm:
                continue
            lines = ["true\\pred," + ",".join(names)]
            lines += [f"{names[i]}," + ",".join(str(v) for v in row) for i, row in enumerate(cm)]
            atomic_write_text(run_dir / "confusion" / f"{model_name}_{which}.csv", "\n".join(lines) + "\n")
