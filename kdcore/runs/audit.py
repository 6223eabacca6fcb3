"""Audit of a user's model on a user's images (folders or zip archives): the `audit` run kind.

Its inputs are an `AuditConfig` (kdcore.runs.configs: the model, its architecture, the image sets).
Every audit gathers label-free evidence and writes a verdict (kdcore.verdict) unless `--no-verdict`;
a given trigger, measured on teacher and student, is one more piece of it (kdcore.verdict.known_trigger),
or, with `--blind`, is used for evaluation only.
`--known-poisons FILE` scores every detector (precision / recall); no method sees it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from kdcore.data.imageset import ImageSet
from kdcore.data.summary import class_count_outliers, count_note
from kdcore.detox import read_known_poisons
from kdcore.models.spec import ModelSpec
from kdcore.pipeline import run_kd_pipeline
from kdcore.progress import ProgressFn, no_progress
from kdcore.run_context import RunContext
from kdcore.runs.common import environment, labelled_sets, start_run, write_report
from kdcore.runs.configs import AuditConfig
from kdcore.sandbox import load_model, load_unlabeled  # untrusted input: in a child process
from kdcore.stages import Stages
from kdcore.triggers import Trigger
from kdcore.verdict.gather import add_to_report, blind_audit
from kdcore.verdict.known_trigger import known_trigger_evidence
from kdcore.views import write_views


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
        poison_idx = read_known_poisons(cfg.known_poisons, train) if cfg.known_poisons and train is not None else None
        sizes = {"unlabeled": len(unlabeled), "train": len(train or ()), "test": len(test or ())}
        on_progress("prepare", 4, 4, {**sizes, "classes": spec.num_classes})  # the first job's ETA goes by them
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
            poison_idx=poison_idx,
            seed=cfg.seed,
            on_progress=on_progress,
            run_dir=run_dir,
        )
        report = out.report()
        if cfg.verdict or cfg.blind or trigger is None:
            student, s_spec = out.models["student"]
            known = None
            if trigger is not None and not cfg.blind and (report.get("teacher") or {}).get("asr") is not None:
                known = known_trigger_evidence(
                    report["teacher"]["asr"], report["student"]["asr"], trigger.target, spec.names
                )
            blind = blind_audit(
                teacher, student, spec, unlabeled, device,
                table=out.table, train=train, poison_idx=poison_idx, student_spec=s_spec, seed=cfg.seed,
                on_progress=on_progress, nc_params=cfg.neural_cleanse, known=known,
            )  # fmt: skip
            add_to_report(report, blind, run_dir, trigger_given=trigger is not None and cfg.blind)
        on_progress("view", 0, 1, {})  # a stage of its own in the job log and the ETA
        views_s = write_views(RunContext(run_dir, "audit", resolved, spec, teacher, train, test, trigger, poison_idx))
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
            views_s=round(views_s, 2),
        )
        report["data"]["trigger"] = trigger.describe(spec.names) if trigger else None
        report["notes"] += trigger.notes() if trigger else []
        report["notes"] += count_notes(train, spec)
        write_report(run_dir, report)
        return report


def count_notes(train: ImageSet | None, spec: ModelSpec) -> list[str]:
    """A note per class that stands out by its number of training images (`class_count_outliers`)."""
    if train is None or train.labels is None:
        return []
    counts = torch.bincount(train.labels.long(), minlength=spec.num_classes).tolist()
    names = spec.names
    return [count_note(c, n, m) for c, n, m in class_count_outliers({names[i]: n for i, n in enumerate(counts)})]
