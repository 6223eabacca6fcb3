"""KD: the core method as a defense of the family (Yoshida & Fujino, AISec 2020; seed 000).

1. Distil a fresh student from the suspect (teacher) on unlabelled clean images: the student
   learns the clean task but not the trigger, which those images never show.
2. With a labelled training set: flag the samples on which teacher and student disagree
   (poison-data candidates, scored p_teacher(ŷ_t) − p_student(ŷ_t)).
3. Fine-tune the student on the training set without the flagged samples.

It repairs (the fine-tuned student, or the distilled one without a training set) and detects
(the flagged samples). The steps are `kdcore.pipeline.kd_stages`, the same code and the same
content-keyed stages as the demo and audit runs; this class only maps them onto the family's
inputs and result. Stages are cached in `inputs.work_dir` (a temporary folder when None).
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path

from kdcore.defenses.base import DefenseInputs, RepairAndDetection, RepairerDetector
from kdcore.pipeline import KDConfig, PipelineOutput, kd_stages
from kdcore.stages import Stages


class KD(RepairerDetector):
    name = "kd"
    config_class = KDConfig
    needs = ("unlabeled",)
    summary = (
        "The core method: distil a student on unlabelled clean images, flag the training samples teacher "
        "and student disagree on, fine-tune the student on the rest"
    )
    paper = (
        "Yoshida & Fujino, Disabling Backdoor and Identifying Poison Data by using Knowledge Distillation "
        "in Backdoor Attacks on Deep Neural Networks, AISec 2020"
    )

    def repair_and_detect(self, inputs: DefenseInputs) -> RepairAndDetection:
        cfg: KDConfig = self.config
        out = PipelineOutput()
        work = nullcontext(inputs.work_dir) if inputs.work_dir is not None else tempfile.TemporaryDirectory()
        with work as root:
            kd = kd_stages(
                inputs.model,
                inputs.spec,
                inputs.unlabeled,
                cfg,
                Stages(Path(root)),
                inputs.device,
                out,
                train=inputs.train,  # optional: without it, no detox and no fine-tuning
                seed=inputs.seed,
                on_progress=inputs.on_progress,
            )
        student = kd.models["student"]
        repaired, r_spec = kd.models.get("finetuned", student)
        evidence: dict = {"student_arch": r_spec.arch, "notes": out.notes}
        if kd.table is None:
            evidence["headline"] = f"distilled a student on {len(inputs.unlabeled):,} unlabelled clean images"
            return RepairAndDetection(repaired, evidence, spec=r_spec, timings=out.timings())
        n, k = len(kd.table.flagged), int(kd.table.flagged.sum())
        evidence |= {"flagged": k, "kept": n - k}
        evidence["headline"] = (
            f"{k:,} of {n:,} training samples flagged (teacher and student disagree); "
            f"the student fine-tuned on the other {n - k:,}"
        )
        return RepairAndDetection(
            repaired,
            evidence,
            spec=r_spec,
            scores=kd.table.score,
            flagged=kd.table.flagged,
            per_sample=kd.table.predictions(),
            others={"student": student},
            timings=out.timings(),
        )
