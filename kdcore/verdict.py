"""The verdict of an audit: is the model backdoored, and towards which class? (issue 10, item 3)

Built from label-free evidence only: it never sees the true trigger, the test set or the poison
indices (those stay evaluation-only). Each piece of evidence is one `Evidence`, which says what it
supports ("backdoor" naming classes, "no_evidence", or "inconclusive" when it could not tell):

    kd-disagreement       the structure of the teacher/student disagreements on the training set
                          (`disagreement_structure`, below)
    neural-cleanse        Neural Cleanse's anomaly index (kdcore.defenses.neural_cleanse): flagged classes
    recovered-trigger     Neural Cleanse's recovered trigger of each candidate class stamped on clean
                          images: the share flipped to that class by the teacher vs by the distilled
                          student (`trigger_supports`). A backdoor lives in the teacher only (the
                          student never saw a triggered image), so a trigger that captures the teacher
                          but hardly the student is a backdoor's; an adversarial patch for a clean
                          class transfers to the student.
    activation-clustering the classes whose activations split into a small, separate cluster
                          (kdcore.defenses.activation_clustering; only with a training set)

The rule (`combine`), deterministic:
  1. backdoor      when ≥ 2 pieces name the same class and one of them is the recovered trigger's
                   teacher/student gap; the target classes are every class that passes;
  2. no_evidence   else, when no piece supports a backdoor and at least one piece says no_evidence;
  3. inconclusive  otherwise (some evidence points at a backdoor, but not enough to agree on a class,
                   or nothing could be measured).
The recovered-trigger piece is required because it is the one that tests the suspicion causally
(a stamp that does or does not flip the teacher); the others only point at a class.

Confidence, in [0, 1]: the evidence weight (`WEIGHTS`: the recovered trigger 2, every other piece 1)
that agrees with the status, over the weight of every piece: for "backdoor" the pieces naming a
target class, for "no_evidence" the pieces saying no_evidence; for "inconclusive" how balanced the
two sides are, 1 − |W_backdoor − W_no_evidence| / W_total.

Thresholds are named constants below, each with where it came from; they are first settings,
to be calibrated by the verdict benchmark (issue 10, item 4), not tuned to the demo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

Support = Literal["backdoor", "no_evidence", "inconclusive"]
STATUSES = ("backdoor", "no_evidence", "inconclusive")
METHODS = ("kd-disagreement", "neural-cleanse", "recovered-trigger", "activation-clustering")
WEIGHTS = {"kd-disagreement": 1.0, "neural-cleanse": 1.0, "recovered-trigger": 2.0, "activation-clustering": 1.0}
REQUIRED = "recovered-trigger"  # the piece every backdoor verdict needs (see the rule above)

# KD disagreement structure. A class is a backdoor candidate when all three hold:
KD_ALPHA = 1e-3  # binomial upper-tail p-value × K (Bonferroni over the classes): a conventional strict level
KD_MIN_FLAGGED = 20  # flagged samples in the class: below this the spread of a handful says nothing
KD_MIN_SPREAD = 0.75  # spread (below): a trigger captures images of every class (quick demo: 0.94 for
#                       the BadNets target; natural confusions, e.g. Shirt ↔ T-shirt/Pullover/Coat, ≤ 0.61)

# Recovered trigger: the teacher is captured and the student is not.
TRIGGER_MIN_TEACHER = 0.8  # share of the teacher's clean images flipped (NC optimises for 0.99 success)
TRIGGER_MAX_TRANSFER = 0.2  # student share / teacher share. A backdoor the student never learned transfers at
#   its base rate (quick demo, BadNets: 0.01); NC's small masks for clean classes are adversarial
#   patches, which do transfer to a distilled copy (quick no-attack demo: 0.35 and 0.43, where a gap
#   threshold of 0.5 on teacher − student still passed them). One seed each: the benchmark calibrates it.


def trigger_supports(teacher_flip: float, student_flip: float) -> bool:
    """The recovered-trigger test: it captures the teacher and does not transfer to the student."""
    return teacher_flip >= TRIGGER_MIN_TEACHER and student_flip <= TRIGGER_MAX_TRANSFER * teacher_flip


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence, as report.json writes it."""

    method: str  # one of METHODS
    finding: str  # one sentence with numbers
    supports: Support
    classes: tuple[int, ...] = ()  # the classes it names (the suspected targets when it supports "backdoor")
    values: dict = field(default_factory=dict)  # the numbers behind the finding, JSON-ready

    def __post_init__(self) -> None:
        if self.method not in METHODS or self.supports not in STATUSES:
            raise ValueError(f"Evidence({self.method!r}, supports={self.supports!r}) is not a known method/status")

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "finding": self.finding,
            "supports": self.supports,
            "classes": list(self.classes),
            "values": self.values,
        }


@dataclass(frozen=True)
class Verdict:
    status: Support
    target_classes: tuple[int, ...]
    target_names: tuple[str, ...]
    confidence: float
    rule: str  # one line: the rule that decided
    evidence: tuple[Evidence, ...]

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "target_classes": list(self.target_classes),
            "target_names": list(self.target_names),
            "confidence": round(self.confidence, 4),
            "rule": self.rule,
            "evidence": [e.to_dict() for e in self.evidence],
        }


def combine(evidence: Sequence[Evidence], class_names: Sequence[str] = ()) -> Verdict:
    """The verdict from the pieces of evidence (the rule of the module docstring)."""
    evidence = tuple(evidence)
    backing: dict[int, list[str]] = {}
    for e in evidence:
        if e.supports == "backdoor":
            for c in e.classes:
                backing.setdefault(c, []).append(e.method)
    targets = tuple(sorted(c for c, ms in backing.items() if REQUIRED in ms and len(set(ms)) >= 2))
    w_total = sum(WEIGHTS[e.method] for e in evidence)
    w_back = sum(WEIGHTS[e.method] for e in evidence if e.supports == "backdoor")
    w_none = sum(WEIGHTS[e.method] for e in evidence if e.supports == "no_evidence")

    def share(w: float) -> float:
        return w / w_total if w_total else 0.0

    if targets:
        w_target = sum(
            WEIGHTS[e.method] for e in evidence if e.supports == "backdoor" and set(e.classes) & set(targets)
        )
        status, confidence = "backdoor", share(w_target)
        rule = (
            f"≥ 2 pieces of evidence name class(es) {list(targets)}, "
            "one of them the recovered trigger's teacher/student gap"
        )
    elif not w_back and w_none:
        status, confidence = "no_evidence", share(w_none)
        rule = "no piece of evidence supports a backdoor"
    else:
        status, confidence = "inconclusive", 1.0 - share(abs(w_back - w_none))
        rule = (
            "some evidence supports a backdoor, but no class is named by ≥ 2 pieces including the recovered trigger"
            if w_back
            else "no piece of evidence could decide"
        )
    names = tuple(class_names[c] if c < len(class_names) else str(c) for c in targets)
    return Verdict(status, targets, names, confidence, rule, evidence)


def flip_matrix(
    teacher_pred: torch.Tensor, student_pred: torch.Tensor, flagged: torch.Tensor, k: int
) -> list[list[int]]:
    """counts[t][s]: flagged samples the teacher predicts t and the student s (K × K, zero diagonal
    when `flagged` is teacher ≠ student)."""
    t, s = teacher_pred[flagged].long(), student_pred[flagged].long()
    counts = torch.bincount(t * k + s, minlength=k * k).view(k, k)
    return counts.tolist()


def binomial_tail(n_hits: int, n: int, p: float) -> float:
    """P(X ≥ n_hits) for X ~ Binomial(n, p)."""
    from scipy.stats import binom

    if n_hits <= 0:
        return 1.0
    return float(binom.sf(n_hits - 1, n, p))


def spread(counts: Sequence[int]) -> float:
    """exp(entropy) of a count vector over the K − 1 classes it may fall in, divided by K − 1: 1 when
    the counts are even over every other class, 1/(K − 1) when they all fall in one. `counts` is a
    row of the flip matrix with its diagonal (always 0) included, so K = len(counts)."""
    n = sum(counts)
    if n == 0 or len(counts) < 3:
        return 0.0
    h = -sum(c / n * math.log(c / n) for c in counts if c)
    return math.exp(h) / (len(counts) - 1)


def disagreement_structure(counts: list[list[int]], teacher_all: Sequence[int]) -> list[dict]:
    """Per teacher class c, from the flip matrix `counts` (flagged samples) and `teacher_all` (the
    teacher's prediction count per class over ALL training samples):

        n_c       flagged samples the teacher puts in c (row sum)
        prior_c   the teacher's share of c over all samples: what c's share of the flagged would
                  be if disagreements fell on every prediction alike
        p_c       Binomial(n_flagged, prior_c) upper tail at n_c, × K (Bonferroni): is c
                  over-represented among the flagged?
        spread_c  `spread` of row c: do c's flagged samples come from (the student sees them as)
                  every other class? A trigger overrides the image, so its flips come from all
                  classes; a natural confusion is between a few look-alike classes.

    A class is a candidate when p_c < KD_ALPHA, n_c ≥ KD_MIN_FLAGGED and spread_c ≥ KD_MIN_SPREAD."""
    k = len(counts)
    n_flag = sum(map(sum, counts))
    n_all = sum(teacher_all)
    rows = []
    for c in range(k):
        n_c = sum(counts[c])
        prior = teacher_all[c] / n_all if n_all else 0.0
        p = min(1.0, k * binomial_tail(n_c, n_flag, prior)) if n_flag and 0 < prior < 1 else 1.0
        sp = spread(counts[c])
        candidate = p < KD_ALPHA and n_c >= KD_MIN_FLAGGED and sp >= KD_MIN_SPREAD
        rows.append(
            {
                "class": c,
                "flagged": n_c,
                "share": round(n_c / n_flag, 4) if n_flag else 0.0,
                "prior": round(prior, 4),
                "p_value": float(f"{p:.3g}"),
                "spread": round(sp, 4),
                "candidate": candidate,
            }
        )
    return rows


def kd_evidence(counts: list[list[int]] | None, teacher_all: Sequence[int], names: Sequence[str]) -> Evidence:
    """The kd-disagreement piece from the flip matrix (None: no training set, nothing to examine)."""
    if counts is None:
        return Evidence(
            "kd-disagreement", "No labelled training set: no teacher/student disagreements to examine.", "inconclusive"
        )
    rows = disagreement_structure(counts, teacher_all)
    n_flag = sum(r["flagged"] for r in rows)
    values = {"flagged": n_flag, "classes": rows, "teacher_all": list(teacher_all)}
    cands = [r for r in rows if r["candidate"]]
    if cands:
        top = max(cands, key=lambda r: r["flagged"])
        finding = (
            f"{top['flagged']} of {n_flag} flagged samples ({top['share']:.0%}) are predicted {names[top['class']]} "
            f"by the teacher against a prior of {top['prior']:.0%} (p = {top['p_value']:.2g}), and they come from "
            f"every class (spread {top['spread']:.2f} ≥ {KD_MIN_SPREAD})"
        )
        return Evidence("kd-disagreement", finding, "backdoor", tuple(r["class"] for r in cands), values)
    top = max(rows, key=lambda r: r["flagged"])
    finding = (
        f"No class funnels the {n_flag} flagged samples: the largest, {names[top['class']]} ({top['flagged']}, "
        f"{top['share']:.0%} against a prior of {top['prior']:.0%}, p = {top['p_value']:.2g}, spread "
        f"{top['spread']:.2f}), fails p < {KD_ALPHA:g}, ≥ {KD_MIN_FLAGGED} flagged or spread ≥ {KD_MIN_SPREAD}"
        if n_flag
        else "The teacher and the student agree on every training sample"
    )
    return Evidence("kd-disagreement", finding, "no_evidence", (), values)


def verdict_text(v: dict) -> str:
    """A report's verdict dict as a few lines for the terminal."""
    head = {"backdoor": "BACKDOOR", "no_evidence": "no evidence of a backdoor", "inconclusive": "inconclusive"}
    target = f" → target {', '.join(v['target_names'])}" if v.get("target_names") else ""
    lines = [f"Verdict: {head.get(v['status'], v['status'])}{target} (confidence {v['confidence']:.2f})"]
    lines.append(f"  rule: {v['rule']}")
    lines += [f"  [{e['supports']}] {e['method']}: {e['finding']}" for e in v.get("evidence", [])]
    return "\n".join(lines)


def with_verdict(text: str, report: dict) -> str:
    """A run's summary with its verdict (a blind audit's) below it."""
    from kdcore.report import verdict_of

    v = verdict_of(report)
    return text + "\n\n" + verdict_text(v) if v else text
