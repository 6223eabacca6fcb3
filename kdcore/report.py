"""The one shape of a run's report.json, and the one name of each model role.

Every run that evaluates models writes them by *role*, each an `EvalResult.to_dict()`:

    baseline    a model trained on clean data (the demo's reference)
    teacher     the suspect model (a defend report writes it as `suspect`)
    student     the distilled student (the core method, step 1)
    finetuned   the student fine-tuned on the detoxified set (the core method, step 3)
    repaired    the model a defense returns (a defend report)

and beside them `detection` (flagged / precision / recall of the samples a method flagged; a
demo or audit writes it as `detox`), `headline` (one line of what a method found), `evidence`
(method-specific) and `timings` (seconds per stage). A blind audit adds `verdict`, `flip_matrix`,
`neural_cleanse`, `activation_clustering` and `evaluation_only` (kdcore.verdict.gather). Consumers read a
report through the functions below, never by its keys, so the audit / demo / refine shape and the defend shape
(and reports written by older versions) read the same.
"""

from __future__ import annotations

METRICS = ("clean_acc", "poison_acc", "asr")  # the metric names of MISSION.md, in table order

ROLES = {  # role → its one display name, in the paper's order
    "baseline": "Baseline (clean-trained)",
    "teacher": "Suspect (teacher)",
    "student": "Distilled student",
    "finetuned": "Fine-tuned student",
    "repaired": "Repaired model",
}

_ALIASES = {"teacher": "suspect"}  # role → the key a defend report writes it under
_DETECTION_KEYS = ("detection", "detox")


def models_of(report: dict) -> dict[str, dict]:
    """{role: EvalResult dict} of every model the report evaluated, in ROLES order."""
    out = {}
    for role in ROLES:
        ev = report.get(role)
        if not isinstance(ev, dict) and role in _ALIASES:
            ev = report.get(_ALIASES[role])
        if isinstance(ev, dict):
            out[role] = ev
    return out


def detection_of(report: dict) -> dict | None:
    """flagged / total / precision / recall / ... of the training samples a method flagged, or None."""
    for key in _DETECTION_KEYS:
        if isinstance(report.get(key), dict):
            return report[key]
    return None


def headline_of(report: dict) -> str:
    """The method's one-line finding ('' when it has none); older reports kept it in `evidence`."""
    return str(report.get("headline") or (report.get("evidence") or {}).get("headline") or "")


def evidence_of(report: dict) -> dict:
    """The method-specific evidence, without the headline (which `headline_of` reads)."""
    return {k: v for k, v in (report.get("evidence") or {}).items() if k != "headline"}


def seconds_of(report: dict) -> dict[str, float]:
    """role → the seconds it took to produce that model: a defense's own time for its model; for the
    core method the distillation (student) and the whole run (fine-tuned student)."""
    out = {}
    timings = report.get("timings") or {}
    if timings.get("distill") is not None:
        out["student"] = timings["distill"]
    if report.get("method_wall_s") is not None:
        out["repaired"] = report["method_wall_s"]
    elif report.get("wall_s") is not None:
        out["finetuned"] = report["wall_s"]
    return out


def metrics_of(ev: dict | None) -> dict[str, float | None]:
    """{metric: value} of one model's EvalResult dict (None for a missing model or metric)."""
    return {m: (ev or {}).get(m) for m in METRICS}


def verdict_of(report: dict) -> dict | None:
    """The audit's verdict (kdcore.verdict: status, target_classes, target_names, confidence, rule,
    evidence), or None when the run gathered no blind evidence."""
    v = report.get("verdict")
    return v if isinstance(v, dict) else None


def flip_matrix_of(report: dict) -> dict | None:
    """{"classes": [names], "counts": [[int]]}: flagged training samples, teacher class × student
    class, or None (no blind evidence, or no training set)."""
    m = report.get("flip_matrix")
    return m if isinstance(m, dict) else None


def evaluation_only_of(report: dict) -> tuple[str, ...]:
    """The metrics measured with a true trigger the verdict never saw (a blind audit's asr, poison_acc)."""
    return tuple(report.get("evaluation_only") or ())
