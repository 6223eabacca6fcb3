"""A stored blind report's verdict recomputed from its numbers with the current constants, re-running no
model: how the verdict benchmark calibrates the cuts (benchmarks/verdict.py --rescore)."""

from __future__ import annotations

from kdcore.defenses.base import get_defense
from kdcore.verdict.detectors import AC_SILHOUETTE_THRESHOLD, AC_SIZE_THRESHOLD, ac_evidence, nc_evidence
from kdcore.verdict.evidence import Evidence
from kdcore.verdict.kd_disagreement import kd_evidence
from kdcore.verdict.known_trigger import known_trigger_evidence
from kdcore.verdict.recovered_trigger import trigger_evidence
from kdcore.verdict.rule import combine


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
    belief = [r.get("student_p") for r in kd_v.get("classes", [])] or None
    kd = kd_evidence(fm["counts"] if fm else None, teacher_all, names, belief)
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
    rt = trigger_evidence(
        rt_v.get("classes", []), rt_v.get("images", 0), candidate_classes(kd, nc, ac), names, rt_v.get("agreement")
    )
    known = []
    if "known-trigger" in old:
        k = old["known-trigger"]
        known = [known_trigger_evidence(k["teacher_asr"], k["student_asr"], k["target"], names)]
    return combine([kd, nc, rt] + ([ac] if ac else []) + known, names).to_dict()
