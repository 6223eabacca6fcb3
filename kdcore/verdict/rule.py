"""The verdict's rule: from the pieces of evidence to "backdoor", "no_evidence" or "inconclusive".

Built from label-free evidence only: it never sees the true trigger, the test set or the poison
indices (those stay evaluation-only). Each piece of evidence is one `Evidence`, which says what it
supports ("backdoor" naming classes, "no_evidence", or "inconclusive" when it could not tell):

    kd-disagreement       the structure of the teacher/student disagreements on the training set
                          (kdcore.verdict.kd_disagreement)
    neural-cleanse        Neural Cleanse's anomaly index (kdcore.defenses.neural_cleanse): flagged classes
    recovered-trigger     Neural Cleanse's recovered trigger of each candidate class stamped on clean
                          images: the share flipped to that class by the teacher vs by the distilled
                          student (`trigger_supports`). A backdoor lives in the teacher only (the
                          student never saw a triggered image), so a trigger that captures the teacher
                          but hardly the student is a backdoor's; an adversarial patch for a clean
                          class transfers to the student.
    activation-clustering the classes whose activations split into a small, separate cluster
                          (kdcore.defenses.activation_clustering; only with a training set)
(each piece's module reads its method's numbers into an `Evidence`; kdcore.verdict.gather runs them)

The status (`combine`) comes from the calibrated probability (kdcore.verdict.calibrated: P(backdoor)
fitted on the model zoo's calibration part, shipped in calibration.json): backdoor at P ≥ t_hi,
no_evidence at P ≤ t_lo, inconclusive between, the target being the most likely class; confidence is
P for backdoor, 1 − P for no_evidence. The pieces' agreement rule below (`agree`) is kept beside it
(`rule_status`), and decides alone where no calibration is shipped.

The agreement rule (`agree`), deterministic:
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

Each piece's thresholds are named constants in its module, each with where it came from,
calibrated by the verdict benchmark (benchmarks/verdict.py --rescore).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace

from kdcore.report import verdict_of
from kdcore.verdict.calibrated import CALIBRATION_FILE, Calibration, load
from kdcore.verdict.evidence import Evidence, Verdict

WEIGHTS = {
    "kd-disagreement": 1.0,
    "neural-cleanse": 1.0,
    "recovered-trigger": 2.0,
    "activation-clustering": 1.0,
    "known-trigger": 2.0,
}
KNOWN = "known-trigger"  # a measurement, not an inference: when it supports a backdoor, it decides
REQUIRED = "recovered-trigger"  # the piece every backdoor verdict needs (see the rule above)
# The least share of clean images on which the distilled student must agree with its teacher for the
# evidence comparing them to be read (`untaught`). The model zoo's students, distilled as every audit
# does, agree on 0.7-0.9 of them (benchmarks/results/zoo.json, "agreement"); one that learnt nothing on
# about 1 / classes.
MIN_AGREEMENT = 0.5


@functools.cache
def shipped_calibration() -> Calibration | None:
    """The calibration fitted on the zoo (kdcore/verdict/calibration.json), None where none is shipped."""
    return load() if CALIBRATION_FILE.is_file() else None


def combine(
    evidence: Sequence[Evidence], class_names: Sequence[str] = (), calibration: Calibration | None = None
) -> Verdict:
    """The verdict from the pieces of evidence: the calibrated probability's status (`calibrated`)
    where a calibration is shipped (or given), the pieces' agreement rule (`agree`) otherwise; the
    given trigger's measurement decides where it supports a backdoor (`KNOWN`). A student that has not
    learnt its teacher (`untaught`) leaves every status inconclusive."""
    ruled = agree(evidence, class_names)
    cal = calibration or shipped_calibration()
    verdict = calibrated(ruled, cal, class_names) if cal else ruled
    verdict = _with_known_trigger(verdict, class_names)
    return untaught(verdict) or verdict


def untaught(verdict: Verdict) -> Verdict | None:
    """The verdict made inconclusive when the distilled student agrees with the teacher on fewer than
    MIN_AGREEMENT of the clean images the recovered triggers are stamped on, else None. Every piece
    that compares the two (the recovered trigger's transfer, the KD disagreements, the given trigger's
    student asr) reads a student that learnt nothing as a student the backdoor did not reach: a digits
    student distilled for 2 epochs (28 % accurate) made every class look like a backdoor's target."""
    trigger = next((e for e in verdict.evidence if e.method == REQUIRED), None)
    agreement = (trigger.values if trigger else {}).get("agreement")
    if agreement is None or agreement >= MIN_AGREEMENT:
        return None
    n = trigger.values.get("images", 0)
    rule = (
        f"the distilled student agrees with the teacher on only {agreement:.0%} of {n} clean images "
        f"(< {MIN_AGREEMENT:.0%}): it has not learnt the teacher, so no evidence that compares them can be "
        "read; distil for longer (more distillation epochs) or give more unlabelled clean images"
    )
    return replace(verdict, status="inconclusive", target_classes=(), target_names=(), confidence=0.0, rule=rule)


def _with_known_trigger(verdict: Verdict, class_names: Sequence[str]) -> Verdict:
    known = next((e for e in verdict.evidence if e.method == KNOWN and e.supports == "backdoor"), None)
    if known is None:
        return verdict
    names = tuple(class_names[c] if c < len(class_names) else str(c) for c in known.classes)
    t, s = known.values["teacher_asr"], known.values["student_asr"]
    rule = f"the given trigger captures the teacher ({100 * t:.0f} %) but not the student ({100 * s:.0f} %)"
    if verdict.p_backdoor is not None:
        rule += f"; the other evidence alone: P(backdoor) = {verdict.p_backdoor:.2f}"
    confidence = max(verdict.confidence if verdict.status == "backdoor" else 0.0, t - s)
    return replace(
        verdict, status="backdoor", target_classes=known.classes, target_names=names, confidence=confidence, rule=rule
    )


def calibrated(ruled: Verdict, cal: Calibration, class_names: Sequence[str]) -> Verdict:
    """`ruled` with the calibrated P(backdoor) deciding the status (kdcore.verdict.calibrated)."""
    values = {e.method: e.values for e in ruled.evidence if e.method != KNOWN}
    nc_l1 = values.get("neural-cleanse", {}).get("l1") or []
    k = len(class_names) or len(nc_l1)
    if not k:
        return ruled
    j = cal.judge(values, k)
    name = class_names[j.target] if j.target < len(class_names) else str(j.target)
    targets = (j.target,) if j.status == "backdoor" else ()
    confidence = {"backdoor": j.p_backdoor, "no_evidence": 1.0 - j.p_backdoor}.get(
        j.status, max(j.p_backdoor, 1.0 - j.p_backdoor)
    )
    n = cal.fitted.get("models", "?")
    cut = {"backdoor": f"≥ {cal.t_hi:g}", "no_evidence": f"≤ {cal.t_lo:g}"}.get(
        j.status, f"between {cal.t_lo:g} and {cal.t_hi:g}"
    )
    rule = (
        f"P(backdoor) = {j.p_backdoor:.2f} {cut} (calibrated on {n} models of the zoo); most likely target "
        f"{name} ({100 * j.target_probability:.0f} % of the target probability)"
    )
    return replace(
        ruled,
        status=j.status,
        target_classes=targets,
        target_names=(name,) if targets else (),
        confidence=confidence,
        rule=rule,
        p_backdoor=j.p_backdoor,
        target_probability=j.target_probability,
        likely_target=j.target,
        class_probabilities=j.class_probabilities,
        rule_status=ruled.status,
    )


def agree(evidence: Sequence[Evidence], class_names: Sequence[str] = ()) -> Verdict:
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


def verdict_text(v: dict) -> str:
    """A report's verdict dict as a few lines for the terminal."""
    head = {"backdoor": "BACKDOOR", "no_evidence": "no evidence of a backdoor", "inconclusive": "inconclusive"}
    target = f" → target {', '.join(v['target_names'])}" if v.get("target_names") else ""
    p = f"P(backdoor) {v['p_backdoor']:.2f}, " if v.get("p_backdoor") is not None else ""
    lines = [f"Verdict: {head.get(v['status'], v['status'])}{target} ({p}confidence {v['confidence']:.2f})"]
    lines.append(f"  rule: {v['rule']}")
    lines += [f"  [{e['supports']}] {e['method']}: {e['finding']}" for e in v.get("evidence", [])]
    return "\n".join(lines)


def with_verdict(text: str, report: dict) -> str:
    """A run's summary with its verdict (a blind audit's) below it."""
    v = verdict_of(report)
    return text + "\n\n" + verdict_text(v) if v else text
