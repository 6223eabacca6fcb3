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

Each piece's thresholds are named constants in its module, each with where it came from,
calibrated by the verdict benchmark (benchmarks/verdict.py --rescore).
"""

from __future__ import annotations

from collections.abc import Sequence

from kdcore.report import verdict_of
from kdcore.verdict.evidence import Evidence, Verdict

WEIGHTS = {"kd-disagreement": 1.0, "neural-cleanse": 1.0, "recovered-trigger": 2.0, "activation-clustering": 1.0}
REQUIRED = "recovered-trigger"  # the piece every backdoor verdict needs (see the rule above)


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
    v = verdict_of(report)
    return text + "\n\n" + verdict_text(v) if v else text
