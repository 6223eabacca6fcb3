"""One piece of the verdict's evidence, and the verdict itself, as report.json writes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Support = Literal["backdoor", "no_evidence", "inconclusive"]
STATUSES = ("backdoor", "no_evidence", "inconclusive")
METHODS = ("kd-disagreement", "neural-cleanse", "recovered-trigger", "activation-clustering", "known-trigger")


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
    # the calibrated verdict (kdcore.verdict.calibrated); None where no calibration is shipped
    p_backdoor: float | None = None
    target_probability: float | None = None  # P(the most likely target | backdoored)
    likely_target: int | None = None  # the most likely target, whatever the status
    class_probabilities: tuple[float, ...] = ()
    rule_status: str | None = None  # what the pieces' agreement rule alone says (kdcore.verdict.rule)

    def to_dict(self) -> dict:
        calibrated = {}
        if self.p_backdoor is not None:
            calibrated = {
                "p_backdoor": round(self.p_backdoor, 4),
                "likely_target": self.likely_target,
                "target_probability": round(self.target_probability or 0.0, 4),
                "class_probabilities": [round(p, 4) for p in self.class_probabilities],
                "rule_status": self.rule_status,
            }
        return {
            "status": self.status,
            "target_classes": list(self.target_classes),
            "target_names": list(self.target_names),
            "confidence": round(self.confidence, 4),
            "rule": self.rule,
            "evidence": [e.to_dict() for e in self.evidence],
            **calibrated,
        }
