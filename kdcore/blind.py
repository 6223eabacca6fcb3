"""The blind audit: gather the verdict's label-free evidence (kdcore.verdict) for a teacher and its
distilled student, as if the trigger were unknown.

1. kd-disagreement: the flip matrix of the detox table (teacher class × student class, flagged
   samples only) and its structure (`kdcore.verdict.kd_evidence`); needs a training set.
2. neural-cleanse: the registered defense, run on the teacher with the unlabelled clean images
   and its default settings (no test set, no trigger: it is given nothing evaluation-only).
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

import statistics
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdcore.data.imageset import ImageSet
from kdcore.defenses.base import DefenseInputs, get_defense
from kdcore.defenses.neural_cleanse import apply_recovered
from kdcore.detox import DetoxTable
from kdcore.models.spec import ModelSpec
from kdcore.progress import ProgressFn, no_progress
from kdcore.train import predict_logits
from kdcore.verdict import (
    TRIGGER_MAX_TRANSFER,
    TRIGGER_MIN_TEACHER,
    Evidence,
    Verdict,
    combine,
    flip_matrix,
    kd_evidence,
    trigger_supports,
)

# Activation clustering's cuts in the verdict (its own defaults: smaller cluster ≤ 0.35 of the class, from
# ART, and silhouette ≥ 0.44, from three demo seeds). Calibrated by benchmarks/verdict.py (2026-12-02,
# quick Fashion-MNIST demo, seed 0 of every attack and BadNets at 1/2/5/10 %): the size cut missed BadNets
# at 10 % (the poisons are 44 % of Sneaker), so it is dropped (0.5: the smaller cluster is never larger);
# the silhouette of every non-target class stayed ≤ 0.361 while the targets of BadNets 2/5/10 %, Blended,
# SIG, WaNet and the image patch scored 0.392–0.501, so the cut sits between them. Misses measured: BadNets
# at 1 % (0.29) and the 20 % image blend (0.25); the other pieces carry those.
AC_SIZE_THRESHOLD = 0.5
AC_SILHOUETTE_THRESHOLD = 0.38
AC_PARAMS = {"size_threshold": AC_SIZE_THRESHOLD, "silhouette_threshold": AC_SILHOUETTE_THRESHOLD}
TRIGGER_IMAGES = 1000  # clean images the recovered triggers are stamped on (the quick demo's pool is 2,000)


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


def recovered_trigger_evidence(
    teacher: nn.Module,
    student: nn.Module,
    spec: ModelSpec,
    student_spec: ModelSpec,
    images: torch.Tensor,
    triggers: dict[int, tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    candidates: Collection[int] | None = None,
) -> Evidence:
    """Stamp each class's (mask (H, W) in [0, 1], pattern (C, H, W) in [0, 255]) on uint8 `images`;
    supports a backdoor for the `candidates` (None: every class in `triggers`) whose trigger flips
    ≥ TRIGGER_MIN_TEACHER of the teacher's images and at most TRIGGER_MAX_TRANSFER times that share
    of the student's (`trigger_supports`). Every class's row is in `values`, marked `candidate`."""
    names = spec.names
    t_pred = predict_logits(teacher, spec, images, device).argmax(1)
    s_pred = predict_logits(student, student_spec, images, device).argmax(1)
    rows = []
    for c, (mask, pattern) in sorted(triggers.items()):
        stamped = apply_recovered(images, mask, pattern)
        t_new = predict_logits(teacher, spec, stamped, device).argmax(1)
        s_new = predict_logits(student, student_spec, stamped, device).argmax(1)
        t_base, s_base = t_pred != c, s_pred != c
        t_flip = float((t_new[t_base] == c).float().mean()) if t_base.any() else 0.0
        s_flip = float((s_new[s_base] == c).float().mean()) if s_base.any() else 0.0
        rows.append(
            {
                "class": c,
                "teacher_flip": round(t_flip, 4),
                "student_flip": round(s_flip, 4),
                "gap": round(t_flip - s_flip, 4),
                "transfer": round(s_flip / t_flip, 4) if t_flip else None,
                "mask_l1": round(float(mask.sum()), 2),
            }
        )
    return trigger_evidence(rows, len(images), set(triggers) if candidates is None else candidates, names)


def trigger_evidence(rows: list[dict], n_images: int, candidates: Collection[int], names: Sequence[str]) -> Evidence:
    """The recovered-trigger piece from per-class flip rows (`recovered_trigger_evidence`'s, or a
    stored report's): a candidate class supports a backdoor when `trigger_supports` its flips."""
    candidates = set(candidates)
    rows = [
        {**r, "candidate": r["class"] in candidates}
        | {"supports": r["class"] in candidates and trigger_supports(r["teacher_flip"], r["student_flip"])}
        for r in rows
    ]
    values = {"images": n_images, "classes": rows}
    hits = [r for r in rows if r["supports"]]
    tested = [r for r in rows if r["candidate"]]
    if not tested:
        return Evidence(
            "recovered-trigger", "No candidate class to test a recovered trigger on.", "inconclusive", (), values
        )
    top = max(hits or tested, key=lambda r: r["gap"])
    text = (
        f"Neural Cleanse's trigger for {names[top['class']]} flips {top['teacher_flip']:.0%} of {n_images} clean "
        f"images on the teacher and {top['student_flip']:.0%} on the distilled student"
    )
    if hits:
        text += f" (transfer {top['transfer']:.2f} ≤ {TRIGGER_MAX_TRANSFER})"
        return Evidence("recovered-trigger", text, "backdoor", tuple(r["class"] for r in hits), values)
    text += f" (needs teacher ≥ {TRIGGER_MIN_TEACHER:.0%} and transfer ≤ {TRIGGER_MAX_TRANSFER})"
    return Evidence("recovered-trigger", text, "no_evidence", (), values)


def nc_evidence(
    anomaly_index: Sequence[float],
    l1: Sequence[float],
    threshold: float,
    names: Sequence[str],
    flagged: Sequence[int] | None = None,
    top: int | None = None,
) -> Evidence:
    """The neural-cleanse piece from NC's per-class anomaly indexes and mask ℓ1 norms. `flagged`
    and `top`: NC's own flagged and most anomalous classes; None (re-scoring) applies NC's rule to
    the numbers: ℓ1 below the median and anomaly index > `threshold`; the smallest ℓ1."""
    if flagged is None:
        median = statistics.median(l1)
        flagged = [c for c, (i, n) in enumerate(zip(anomaly_index, l1, strict=True)) if n < median and i > threshold]
    flagged = list(flagged)
    if top is None:
        top = min(range(len(l1)), key=lambda c: l1[c])  # below the median the index grows as ℓ1 shrinks
    finding = (
        f"Neural Cleanse flags {', '.join(names[c] for c in flagged)} (anomaly index {anomaly_index[top]:.2f} "
        f"> {threshold:g})"
        if flagged
        else f"Neural Cleanse flags no class: the most anomalous, {names[top]}, has index "
        f"{anomaly_index[top]:.2f} ≤ {threshold:g}"
    )
    values = {"anomaly_index": list(anomaly_index), "l1": list(l1), "threshold": threshold, "most_anomalous": top}
    return Evidence("neural-cleanse", finding, "backdoor" if flagged else "no_evidence", tuple(flagged), values)


def ac_evidence(
    rows: Sequence[dict],
    size_threshold: float,
    silhouette_threshold: float,
    names: Sequence[str],
    poisoned: Sequence[int] | None = None,
) -> Evidence:
    """The activation-clustering piece from AC's per-class table. `poisoned`: AC's own decision;
    None (re-scoring) applies AC's rule: smaller cluster ≤ `size_threshold` of the class and
    silhouette ≥ `silhouette_threshold`."""
    if poisoned is None:
        poisoned = [
            r["class"]
            for r in rows
            if r["small_cluster_fraction"] <= size_threshold and r["silhouette"] >= silhouette_threshold
        ]
    poisoned = list(poisoned)
    n_flagged = sum(r["small_cluster_size"] for r in rows if r["class"] in poisoned)
    finding = (
        f"Activation clustering splits off a small cluster in {', '.join(names[c] for c in poisoned)} "
        f"({n_flagged} samples flagged)"
        if poisoned
        else "Activation clustering finds no class with a small, well-separated cluster"
    )
    values = {"poisoned_classes": poisoned, "flagged": n_flagged}
    return Evidence(
        "activation-clustering", finding, "backdoor" if poisoned else "no_evidence", tuple(poisoned), values
    )


def candidate_classes(kd: Evidence, nc: Evidence, ac: Evidence | None) -> set[int]:
    """The classes whose recovered trigger is tested: NC's most anomalous and every class a piece names."""
    return {nc.values["most_anomalous"], *nc.classes, *kd.classes, *(ac.classes if ac else ())}


def rescore(report: dict) -> dict:
    """A stored blind report's verdict recomputed from its numbers with the current constants
    (kdcore.verdict's, NC's default threshold and the AC cuts above), re-running no model. The verdict
    benchmark calibrates with it (benchmarks/verdict.py --rescore)."""
    old = {e["method"]: e["values"] for e in report["verdict"]["evidence"]}
    nc_rows = report["neural_cleanse"]["classes"]
    names = [r["name"] for r in nc_rows]
    fm = report.get("flip_matrix")
    kd_v = old["kd-disagreement"]
    teacher_all = kd_v.get("teacher_all") or [round(r["prior"] * report["data"]["train"]) for r in kd_v["classes"]]
    kd = kd_evidence(fm["counts"] if fm else None, teacher_all, names)
    nc_cfg = get_defense("neural-cleanse").config_class()
    nc = nc_evidence([r["anomaly_index"] for r in nc_rows], [r["l1"] for r in nc_rows], nc_cfg.threshold, names)
    ac = None
    if report.get("activation_clustering"):
        stored = report["activation_clustering"]
        if "classes" in stored:
            ac = ac_evidence(stored["classes"], AC_SIZE_THRESHOLD, AC_SILHOUETTE_THRESHOLD, names)
        else:  # a report from before the per-class table was kept: its own decision
            ac = ac_evidence([], AC_SIZE_THRESHOLD, AC_SILHOUETTE_THRESHOLD, names, stored["poisoned_classes"])
    rt_v = old["recovered-trigger"]
    rt = trigger_evidence(rt_v.get("classes", []), rt_v.get("images", 0), candidate_classes(kd, nc, ac), names)
    return combine([kd, nc, rt] + ([ac] if ac else []), names).to_dict()


def _nc_trigger(images: dict[str, torch.Tensor], c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c's (mask (H, W) in [0, 1], pattern (C, H, W) in [0, 255]) from NC's uint8 evidence images."""
    return images[f"mask_{c}"][0].float() / 255.0, images[f"pattern_{c}"].float()


def check_nc_params(params: dict) -> None:
    """ConfigError for Neural Cleanse settings that its config refuses (checked before a job is queued)."""
    get_defense("neural-cleanse").from_params(params)


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
) -> BlindOutput:
    """Gather the four pieces of evidence and combine them (module docstring). `poison_idx` only
    scores activation clustering (precision / recall); no piece of evidence sees it. `nc_params`:
    Neural Cleanse's settings (its config class; {} = its defaults)."""
    names: Sequence[str] = spec.names
    k = spec.num_classes
    timings: dict[str, float] = {}
    evidence: list[Evidence] = []

    t0 = time.perf_counter()
    counts = None
    out_flip = None
    teacher_all: list[int] = [0] * k
    if table is not None:
        counts = flip_matrix(table.teacher_pred, table.student_pred, table.flagged, k)
        teacher_all = torch.bincount(table.teacher_pred.long(), minlength=k).tolist()
        out_flip = {"classes": list(names), "counts": counts}
    kd = kd_evidence(counts, teacher_all, names)
    timings["kd-disagreement"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    nc_in = DefenseInputs(
        model=teacher, spec=spec, device=device, unlabeled=unlabeled, seed=seed, on_progress=on_progress
    )
    nc = get_defense("neural-cleanse").from_params(nc_params).run(nc_in)
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
    candidates = candidate_classes(kd, nc_ev, ac_ev)
    pool = unlabeled.images[:TRIGGER_IMAGES]
    triggers = {c: _nc_trigger(nc.images, c) for c in range(k)}  # every class: the rows re-score (docstring)
    rt = recovered_trigger_evidence(teacher, student, spec, student_spec or spec, pool, triggers, device, candidates)
    timings["recovered-trigger"] = time.perf_counter() - t0

    evidence = [kd, nc_ev, rt] + ([ac_ev] if ac_ev else [])
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
    from kdcore.runs.defend import write_evidence

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
