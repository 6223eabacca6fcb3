"""The verdict as a calibrated probability: P(the model is backdoored) and its most likely target.

Fitted on the calibration part of the model zoo only (benchmarks/zoo.py, benchmarks/calibrate.py) and
shipped as numbers in `calibration.json` beside this module (no pickled code). Two stages:

1. each class c gets a score from its evidence features (`FEATURES`, read from the pieces' `values`,
   and two products: a disagreement funnel counts as far as a recovered trigger or mask backs it):
   a logistic regression fitted on every (model, class) pair of the calibration models, labelled 1
   when the model is backdoored towards c. The class probabilities p_c say how target-like each class
   looks;
2. the model's P(backdoor) is a logistic function (Platt scaling) of the largest class score, fitted
   on the calibration models with class scores from cross-fitting (each model scored by a stage-1 fit
   that never saw it), so the probability is not flattered by stage 1 having seen the model.

The most likely target is the class with the largest score; its probability, given that the model is
backdoored, is p_c over the sum of every class's p_c.

The status follows with stated thresholds: backdoor when P ≥ t_hi, no_evidence when P ≤ t_lo,
inconclusive between (`Calibration.status`). The weighted features are scale-free (ratios, shares,
probabilities, silhouettes), so they read the same for any image size, Neural Cleanse budget or
architecture (the funnel's p-value, which falls with the training set's size, is kept at weight 0); a
piece that did not run (no training set: no disagreement, no clustering) reads as "no signal" (0).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")

# name → what it measures for class c (0 = no signal)
FEATURES: dict[str, str] = {
    "nc_norm_ratio": "log(median mask ℓ1 / class c's mask ℓ1): how much smaller c's recovered trigger is",
    "nc_smallest": "1 when c's recovered trigger is the smallest of all classes",
    "trigger_gap": "share of clean images c's recovered trigger flips on the teacher minus on the student",
    "trigger_gap_excess": "that gap minus the median gap over the classes",
    "trigger_transfer": "student flip over teacher flip, minus 1 (0: the student is captured as much)",
    "kd_log_p": "−log10 of the funnel test's p-value for c among the disagreements, over 10 (capped at 3)",
    "kd_excess": "c's share of the disagreements minus its share of the teacher's predictions",
    "kd_spread": "how many source classes the disagreements into c come from (0 one, 1 all evenly)",
    "ac_silhouette": "activation clustering's silhouette of c's two clusters",
    "count_excess": "c's share of the teacher's predictions on the training set, times the classes, minus 1 "
    "(capped at COUNT_CAP)",
    "kd_x_trigger": "kd_excess times trigger_gap_excess where that is positive: a funnel that c's trigger backs",
    "kd_x_nc": "kd_excess times nc_norm_ratio where that is positive: a funnel that c's small mask backs",
    "kd_doubt": "1 − 2 × the median probability the student gives c on the disagreements the teacher sends to c, "
    "where positive: how implausible the clean student finds the teacher's calls (0: as likely as not, or none)",
}


# Which way each feature points at a target: +1 where more of it is more target-like, -1 where less is
# (a trigger that transfers less to the student). The fit keeps every coefficient on its side or at 0,
# so more evidence for a class never lowers its score: with a few dozen models an unconstrained fit gave
# two features the wrong sign (Neural Cleanse's smallest mask and the clustering's silhouette).
# Kept at 0, chosen by `benchmarks/calibrate.py --cv` (10-fold cross-validation on the calibration part
# alone, 89 usable models, 37 backdoored, 16 of them trained like the quick demo's teacher: from the earlier
# choice, the best one-step change is adopted while it lowers the cross-validated cross-entropy by more than
# 0.01). Last search (2026-12-07, after the student's belief was added as kd_doubt and, as products with the
# funnel's size and p-value, two more candidates, weighed at 0.221 and 0.178 in its first round and since
# removed): the earlier choice 0.184; kd_doubt weighted, 0.117 (adopted); then the funnel's p-value dropped,
# 0.083 (adopted); then no change gained more than 0.01 (C = 10: 0.074). Earlier searches had capped the
# class count (COUNT_CAP) and weighted the clustering's silhouette.
# - the funnel's p-value: not scale-free (it falls with the training set's size; capped at 1e-30), so a
#   clean teacher trained longer or on more images reads a natural funnel as ever more significant; the
#   quick demo's clean teacher (10,000 images) had it at the cap. Whether the student believes the funnel's
#   calls (kd_doubt) separates a natural funnel from a backdoor's where its size cannot.
# - the funnel's size and spread on their own (weighted in the last search's first round: 0.201, 0.192): a
#   clean teacher trained longer makes a stronger natural funnel. The quick demo's clean teacher says Shirt
#   in 0.39 of its disagreements, 0.30 above its share of predictions (kd_excess); the zoo's long-trained
#   clean models reach 0.14-0.23, its 3-epoch ones 0.12 (90th percentile). The funnel still counts, through
#   its products with the trigger's and the mask's evidence.
UNWEIGHTED = ("kd_log_p", "kd_excess", "kd_spread")
NATURAL_SIGNS: dict[str, int] = {name: -1 if name == "trigger_transfer" else 1 for name in FEATURES}
SIGNS: dict[str, int] = {name: 0 if name in UNWEIGHTED else NATURAL_SIGNS[name] for name in FEATURES}


# The most class-count excess a poisoning explains: moving 10 % of a balanced training set into one class
# (the zoo's highest rate) doubles its share, an excess of 1. Beyond that, more is not more evidence of a
# backdoor: the calibration's five clean models over 1.4 (many labels of three classes folded into Shirt)
# outnumber its backdoored ones (none), and a linear score would call them backdoored all the more. 10-fold
# CV on the calibration part: cross-entropy 0.234 uncapped, 0.215 capped at 1, 0.221 at 1.5. Added after
# the fresh held-out part showed four such models called backdoored (see the README's zoo section).
COUNT_CAP = 1.0


def _finite(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, x)) if math.isfinite(x) else (hi if x > 0 else lo)


def class_features(values: Mapping[str, Mapping], k: int) -> list[list[float]]:
    """One row of `FEATURES` per class, from the pieces' `values` by method (the verdict's evidence as
    report.json keeps it; activation clustering's per-class silhouettes under "silhouette")."""
    rows = [[0.0] * len(FEATURES) for _ in range(k)]
    col = {name: i for i, name in enumerate(FEATURES)}
    nc = values.get("neural-cleanse") or {}
    if nc.get("l1"):
        l1 = [max(float(x), 1e-6) for x in nc["l1"]]
        med = statistics.median(l1)
        smallest = min(range(k), key=lambda c: l1[c])
        for c in range(k):
            rows[c][col["nc_norm_ratio"]] = _finite(math.log(med / l1[c]), -3.0, 3.0)
            rows[c][col["nc_smallest"]] = float(c == smallest)
    rt = (values.get("recovered-trigger") or {}).get("classes") or []
    if rt:
        gaps = [float(r["teacher_flip"]) - float(r["student_flip"]) for r in rt]
        med_gap = statistics.median(gaps)
        for r, gap in zip(rt, gaps, strict=True):
            c = int(r["class"])
            rows[c][col["trigger_gap"]] = gap
            rows[c][col["trigger_gap_excess"]] = gap - med_gap
            teacher = float(r["teacher_flip"])
            rows[c][col["trigger_transfer"]] = (float(r["student_flip"]) / teacher - 1.0) if teacher > 0 else 0.0
    kd = (values.get("kd-disagreement") or {}).get("classes") or []
    if not sum(int(r.get("flagged", 1)) for r in kd):  # no disagreement at all: no funnel to read, no signal
        kd = []
    for r in kd:
        c = int(r["class"])
        p = float(r["p_value"])
        rows[c][col["kd_log_p"]] = _finite(-math.log10(p) / 10.0, 0.0, 3.0) if p > 0 else 3.0
        rows[c][col["kd_excess"]] = float(r["share"]) - float(r["prior"])
        rows[c][col["kd_spread"]] = float(r["spread"])
        rows[c][col["count_excess"]] = min(COUNT_CAP, float(r["prior"]) * k - 1.0)
        if r.get("student_p") is not None:
            rows[c][col["kd_doubt"]] = max(0.0, 1.0 - 2.0 * float(r["student_p"]))
    sil = (values.get("activation-clustering") or {}).get("silhouette") or []
    for c, s in enumerate(sil[:k]):
        rows[c][col["ac_silhouette"]] = float(s) if s is not None else 0.0
    for r in rows:  # a disagreement funnel alone is also what a clean model's natural confusions make (Shirt);
        # signed: a class with a small mask or a trigger that the disagreements avoid loses (10-fold CV on the
        # calibration part: cross-entropy 0.248 signed, 0.352 with only a positive funnel counted)
        r[col["kd_x_trigger"]] = r[col["kd_excess"]] * max(0.0, r[col["trigger_gap_excess"]])
        r[col["kd_x_nc"]] = r[col["kd_excess"]] * max(0.0, r[col["nc_norm_ratio"]])
    return rows


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclass(frozen=True)
class Judgement:
    """What the calibrated verdict says of one model."""

    p_backdoor: float
    status: str
    target: int  # the most likely target class
    target_probability: float  # P(target is `target` | backdoored)
    class_probabilities: tuple[float, ...]  # stage 1's p_c, per class


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration (calibration.json): stage 1's standardisation and coefficients, stage 2's
    Platt scaling, the thresholds, and where it was fitted."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    platt_a: float  # P(backdoor) = sigmoid(platt_a × largest class logit + platt_b)
    platt_b: float
    t_lo: float
    t_hi: float
    fitted: dict = field(default_factory=dict)  # models, parts, setup, date: where the numbers came from

    def class_logits(self, rows: Sequence[Sequence[float]]) -> list[float]:
        return [
            self.intercept
            + sum(w * (x - m) / s for w, x, m, s in zip(self.coef, r, self.mean, self.scale, strict=True))
            for r in rows
        ]

    def status(self, p: float) -> str:
        return "backdoor" if p >= self.t_hi else "no_evidence" if p <= self.t_lo else "inconclusive"

    def judge(self, values: Mapping[str, Mapping], k: int) -> Judgement:
        return self.judge_rows(class_features(values, k))

    def judge_rows(self, rows: Sequence[Sequence[float]]) -> Judgement:
        """`judge` from the class features themselves (one row of FEATURES per class)."""
        logits = self.class_logits(rows)
        top = max(range(len(logits)), key=lambda c: logits[c])
        p = _sigmoid(self.platt_a * logits[top] + self.platt_b)
        pcs = [_sigmoid(z) for z in logits]
        total = sum(pcs)
        return Judgement(p, self.status(p), top, pcs[top] / total if total else 0.0, tuple(pcs))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Calibration:
        d = dict(d)
        if tuple(d["features"]) != tuple(FEATURES):
            raise ValueError(f"calibration features {d['features']} are not this version's {list(FEATURES)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def load(path: Path = CALIBRATION_FILE) -> Calibration:
    return Calibration.from_dict(json.loads(Path(path).read_text()))


def save(cal: Calibration, path: Path = CALIBRATION_FILE) -> None:
    Path(path).write_text(json.dumps(cal.to_dict(), indent=1) + "\n")
