"""The blind audit: gather the verdict's label-free evidence for a teacher and its distilled student,
as if the trigger were unknown, and combine it (kdcore.verdict.rule).

1. kd-disagreement: the flip matrix of the detox table (teacher class × student class, flagged
   samples only) and its structure (`kdcore.verdict.kd_evidence`); needs a training set.
2. neural-cleanse: the registered defense, run on the teacher with the unlabelled clean images
   and the budget the calibration's evidence was gathered with (`VERDICT_NC`, under any settings
   the user gives; no test set, no trigger: it is given nothing evaluation-only).
3. activation-clustering: the registered detector on the training set (when there is one), with
   the verdict's calibrated cuts (`AC_PARAMS`);
   with known poisons (`poison_idx`, evaluation-only) its precision / recall are reported.
4. recovered-trigger: Neural Cleanse's mask and pattern of every class read back from its
   evidence images (the PNGs a run saves, so a `recovered:RUN_DIR` trigger stamps the same),
   stamped with `apply_recovered` on up to `TRIGGER_IMAGES` unlabelled clean images; for teacher
   and student, the share of the images that model did not already put in the class which it now
   does. Only candidate classes (those the other pieces name, and NC's most anomalous) can support
   a backdoor; the other classes' rows are kept so that the verdict benchmark can re-score stored
   reports under other thresholds (`benchmarks/verdict.py --rescore`) without re-running a model.

Each piece's wall time goes into `timings` (seconds).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdcore.data.imageset import ImageSet
from kdcore.defenses.base import DefenseInputs, get_defense
from kdcore.defenses.evidence import write_evidence
from kdcore.detox import DetoxTable
from kdcore.models.spec import ModelSpec
from kdcore.progress import ProgressFn, no_progress
from kdcore.verdict.detectors import AC_PARAMS, ac_evidence, nc_evidence
from kdcore.verdict.evidence import Evidence, Verdict
from kdcore.verdict.kd_disagreement import flip_matrix, kd_evidence, student_belief
from kdcore.verdict.recovered_trigger import TRIGGER_IMAGES, recovered_trigger_evidence
from kdcore.verdict.rescore import candidate_classes
from kdcore.verdict.rule import combine

# Neural Cleanse's budget for the verdict: the one the model zoo's audits ran with, whose evidence the
# shipped calibration was fitted on (benchmarks/zoo/jobs.py), so P(backdoor) reads evidence gathered
# the same way: a third of NC's default steps on 12 of its 32 images a step.
VERDICT_NC = {"steps": 100, "batch_size": 12, "n_images": 150, "n_holdout": 100}


def verdict_nc(params: dict | None) -> dict:
    """The verdict's Neural Cleanse settings: `params` (the user's) over `VERDICT_NC`."""
    return {**VERDICT_NC, **(params or {})}


@dataclass
class BlindOutput:
    """The verdict and what the dashboard shows beside it (all JSON-ready but `images`)."""

    verdict: Verdict
    flip_matrix: dict | None = None  # {"classes": [names], "counts": [[int]]}, with a training set
    neural_cleanse: dict = field(default_factory=dict)  # NC's evidence (per-class table, headline)
    activation_clustering: dict | None = None  # poisoned classes, headline, detection (precision / recall)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per piece of evidence
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # NC's evidence images, uint8 (C, H, W)

    def report(self) -> dict:
        """The report.json keys: verdict, flip_matrix, neural_cleanse, activation_clustering."""
        return {
            "verdict": self.verdict.to_dict(),
            "flip_matrix": self.flip_matrix,
            "neural_cleanse": self.neural_cleanse,
            "activation_clustering": self.activation_clustering,
        }


def _nc_trigger(images: dict[str, torch.Tensor], c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c's (mask (H, W) in [0, 1], pattern (C, H, W) in [0, 255]) from NC's uint8 evidence images."""
    return images[f"mask_{c}"][0].float() / 255.0, images[f"pattern_{c}"].float()


def blind_audit(
    teacher: nn.Module,
    student: nn.Module,
    spec: ModelSpec,
    unlabeled: ImageSet,
    device: torch.device,
    *,
    table: DetoxTable | None = None,
    train: ImageSet | None = None,
    poison_idx: torch.Tensor | None = None,
    student_spec: ModelSpec | None = None,
    seed: int = 0,
    on_progress: ProgressFn = no_progress,
    nc_params: dict | None = None,
    known: Evidence | None = None,
) -> BlindOutput:
    """Gather the four pieces of evidence and combine them (module docstring). `poison_idx` only
    scores activation clustering (precision / recall); no piece of evidence sees it. `nc_params`:
    Neural Cleanse's settings over `VERDICT_NC` (its config class's names). `known`: the given trigger's piece
    (kdcore.verdict.known_trigger), one more piece of evidence; None in a blind audit."""
    names: Sequence[str] = spec.names
    k = spec.num_classes
    timings: dict[str, float] = {}
    evidence: list[Evidence] = []

    t0 = time.perf_counter()
    counts = None
    out_flip = None
    teacher_all: list[int] = [0] * k
    belief = None
    if table is not None:
        counts = flip_matrix(table.teacher_pred, table.student_pred, table.flagged, k)
        teacher_all = torch.bincount(table.teacher_pred.long(), minlength=k).tolist()
        belief = student_belief(table.teacher_pred, table.student_conf, table.flagged, k)
        out_flip = {"classes": list(names), "counts": counts}
    kd = kd_evidence(counts, teacher_all, names, belief)
    timings["kd-disagreement"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    nc_in = DefenseInputs(
        model=teacher, spec=spec, device=device, unlabeled=unlabeled, seed=seed, on_progress=on_progress
    )
    nc = get_defense("neural-cleanse").from_params(verdict_nc(nc_params)).run(nc_in)
    rows = nc.evidence["classes"]
    nc_ev = nc_evidence(
        [r["anomaly_index"] for r in rows], [r["l1"] for r in rows], nc.evidence["threshold"], names,
        flagged=nc.evidence["flagged"], top=nc.evidence["most_anomalous"]["class"],
    )  # fmt: skip
    timings["neural-cleanse"] = nc.wall_s

    ac_ev, ac_out = None, None
    if train is not None:
        ac_in = DefenseInputs(
            model=teacher,
            spec=spec,
            device=device,
            train=train,
            poison_idx=poison_idx,
            seed=seed,
            on_progress=on_progress,
        )
        ac = get_defense("activation-clustering").from_params(AC_PARAMS).run(ac_in)
        ac_ev = ac_evidence(
            ac.evidence["classes"], ac.evidence["size_threshold"], ac.evidence["silhouette_threshold"], names,
            poisoned=ac.evidence["poisoned_classes"],
        )  # fmt: skip
        ac_out = {
            "headline": ac.headline,
            "poisoned_classes": list(ac_ev.classes),
            "detection": ac.detection.to_dict() if ac.detection else None,
            # per class: small_cluster_fraction, silhouette, ... and the cuts, to re-score without a re-run
            "classes": ac.evidence["classes"],
            "size_threshold": ac.evidence["size_threshold"],
            "silhouette_threshold": ac.evidence["silhouette_threshold"],
        }
        timings["activation-clustering"] = ac.wall_s

    t0 = time.perf_counter()
    on_progress("recovered-trigger", 0, 1, {})  # its own stage in the job log and the ETA
    candidates = candidate_classes(kd, nc_ev, ac_ev)
    pool = unlabeled.images[:TRIGGER_IMAGES]
    triggers = {c: _nc_trigger(nc.images, c) for c in range(k)}  # every class: the rows re-score (docstring)
    rt = recovered_trigger_evidence(teacher, student, spec, student_spec or spec, pool, triggers, device, candidates)
    timings["recovered-trigger"] = time.perf_counter() - t0
    on_progress("recovered-trigger", 1, 1, {})

    evidence = [kd, nc_ev, rt] + ([ac_ev] if ac_ev else []) + ([known] if known else [])
    return BlindOutput(
        verdict=combine(evidence, names),
        flip_matrix=out_flip,
        neural_cleanse={"headline": nc.headline, **nc.evidence},
        activation_clustering=ac_out,
        timings={k_: round(v, 3) for k_, v in timings.items()},
        images=nc.images,
    )


def add_to_report(report: dict, blind: BlindOutput, run_dir, trigger_given: bool) -> None:
    """Put the blind audit into a run's report (verdict, flip matrix, NC and AC, their timings) and
    NC's evidence images into `<run_dir>/evidence/` (as a defend run writes them). With a true
    trigger given too, its metrics are marked `evaluation_only`: the verdict never saw it."""
    report.update(blind.report())
    report["timings"] = {**report.get("timings", {}), **blind.timings}
    if trigger_given:
        report["evaluation_only"] = ["asr", "poison_acc"]
        report["notes"] = [
            *report.get("notes", []),
            "Blind audit: the verdict never saw the trigger; asr and poison_acc use the true trigger "
            "for comparison only (evaluation_only).",
        ]
    write_evidence(Path(run_dir), blind.images)  # pictures, and the recovered triggers' raw tensors
