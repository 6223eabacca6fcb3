"""kdcore.report: one reader for the audit / demo / refine report and the defend report, old ones too."""

from __future__ import annotations

from kdcore.report import METRICS, ROLES, detection_of, evidence_of, headline_of, metrics_of, models_of, seconds_of


def _ev(x: float) -> dict:
    return {"clean_acc": x, "poison_acc": x / 2, "asr": 1 - x, "n_clean": 10}


AUDIT = {  # the shape runs/audit.py and runs/demo.py write (via PipelineOutput.report)
    "baseline": _ev(0.99),
    "teacher": _ev(0.98),
    "student": _ev(0.9),
    "finetuned": None,
    "detox": {"flagged": 5, "total": 100},
    "timings": {"distill": 12.5},
    "wall_s": 40.0,
}
DEFEND = {  # the shape runs/defend.py writes (DefenseResult.report)
    "method": "kd",
    "family": "repairer+detector",
    "suspect": _ev(0.98),
    "student": _ev(0.9),
    "repaired": _ev(0.95),
    "detection": {"flagged": 7, "total": 100},
    "headline": "7 flagged",
    "evidence": {"kept": 93},
    "timings": {"distill": 3.0, "finetune": 1.0},
    "method_wall_s": 4.5,
    "wall_s": 6.0,
}
OLD_DEFEND = {"method": "bcu", "suspect": _ev(0.98), "repaired": None, "evidence": {"headline": "old", "x": 1}}


def test_one_role_table_and_metric_triple():
    assert METRICS == ("clean_acc", "poison_acc", "asr")
    assert list(ROLES) == ["baseline", "teacher", "student", "finetuned", "repaired"]
    assert len(set(ROLES.values())) == len(ROLES)


def test_models_of_reads_both_shapes_in_role_order():
    assert list(models_of(AUDIT)) == ["baseline", "teacher", "student"]  # None: not evaluated
    assert models_of(AUDIT)["teacher"] is AUDIT["teacher"]
    assert list(models_of(DEFEND)) == ["teacher", "student", "repaired"]
    assert models_of(DEFEND)["teacher"] is DEFEND["suspect"]
    assert list(models_of(OLD_DEFEND)) == ["teacher"]
    assert models_of({"kind": "sweep", "rows": []}) == {}
    assert metrics_of(AUDIT["student"]) == {"clean_acc": 0.9, "poison_acc": 0.45, "asr": 0.09999999999999998}
    assert metrics_of(None) == dict.fromkeys(METRICS)


def test_detection_headline_evidence_and_seconds():
    assert detection_of(AUDIT)["flagged"] == 5 and detection_of(DEFEND)["flagged"] == 7
    assert detection_of(OLD_DEFEND) is None
    assert headline_of(DEFEND) == "7 flagged" and headline_of(OLD_DEFEND) == "old" and headline_of(AUDIT) == ""
    assert evidence_of(OLD_DEFEND) == {"x": 1} and evidence_of(DEFEND) == {"kept": 93}
    assert seconds_of(AUDIT) == {"student": 12.5, "finetuned": 40.0}
    assert seconds_of(DEFEND) == {"student": 3.0, "repaired": 4.5}
