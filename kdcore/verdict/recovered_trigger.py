"""The recovered-trigger piece: Neural Cleanse's recovered trigger of each class stamped on clean images.

The share of the images flipped to that class by the teacher vs by the distilled student. A backdoor lives
in the teacher only (the student never saw a triggered image), so a trigger that captures the teacher but
hardly the student is a backdoor's; an adversarial patch for a clean class transfers to the student.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn

from kdcore.models.spec import ModelSpec
from kdcore.train import predict_logits
from kdcore.triggers.recovered import apply_recovered
from kdcore.verdict.evidence import Evidence

# The teacher is captured and the student is not.
TRIGGER_MIN_TEACHER = 0.8  # share of the teacher's clean images flipped (NC optimises for 0.99 success)
TRIGGER_MAX_TRANSFER = 0.2  # student share / teacher share. A backdoor the student never learned transfers at
#   its base rate (quick demo, BadNets: 0.01); NC's small masks for clean classes are adversarial
#   patches, which do transfer to a distilled copy (quick no-attack demo: 0.35 and 0.43, where a gap
#   threshold of 0.5 on teacher − student still passed them). One seed each: the benchmark calibrates it.


def trigger_supports(teacher_flip: float, student_flip: float) -> bool:
    """The recovered-trigger test: it captures the teacher and does not transfer to the student."""
    return teacher_flip >= TRIGGER_MIN_TEACHER and student_flip <= TRIGGER_MAX_TRANSFER * teacher_flip


TRIGGER_IMAGES = (
    500  # clean images the recovered triggers are stamped on: a flip share to ±2 % (the quick demo's pool is 2,000)
)


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
    agreement = round(float((t_pred == s_pred).float().mean()), 4) if len(images) else None
    chosen = set(triggers) if candidates is None else candidates
    return trigger_evidence(rows, len(images), chosen, names, agreement)


def trigger_evidence(
    rows: list[dict], n_images: int, candidates: Collection[int], names: Sequence[str], agreement: float | None = None
) -> Evidence:
    """The recovered-trigger piece from per-class flip rows (`recovered_trigger_evidence`'s, or a
    stored report's): a candidate class supports a backdoor when `trigger_supports` its flips.
    `agreement`: the share of the clean images on which student and teacher agree (kept in `values`)."""
    candidates = set(candidates)
    rows = [
        {**r, "candidate": r["class"] in candidates}
        | {"supports": r["class"] in candidates and trigger_supports(r["teacher_flip"], r["student_flip"])}
        for r in rows
    ]
    values = {"images": n_images, "classes": rows} | ({} if agreement is None else {"agreement": agreement})
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
