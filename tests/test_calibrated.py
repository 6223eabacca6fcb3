"""The calibrated verdict (kdcore.verdict.calibrated, benchmarks/calibrate.py): the features read the
evidence of the right class, a fit separates backdoored from clean evidence and round-trips as plain
numbers, `combine` takes its status from P(backdoor), and the shipped calibration is the one its
documented command fits on the zoo's calibration part only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.calibrate import SignedLogistic, cross_validate, fit, implanted, model_rows, synthetic_rows  # noqa: E402
from kdcore.verdict.calibrated import CALIBRATION_FILE, FEATURES, SIGNS, Calibration, class_features, load  # noqa: E402
from kdcore.verdict.evidence import Evidence  # noqa: E402
from kdcore.verdict.known_trigger import known_trigger_evidence  # noqa: E402
from kdcore.verdict.rule import agree, combine  # noqa: E402

NAMES = tuple(f"c{i}" for i in range(10))
COL = {name: i for i, name in enumerate(FEATURES)}


def values(target: int | None) -> dict:
    """Evidence numbers as report.json keeps them: class `target` with a small trigger that captures the
    teacher only; every other class with a large one that transfers."""
    l1 = [8.0 if c == target else 40.0 + c for c in range(10)]
    rt = [
        {"class": c, "teacher_flip": 0.97, "student_flip": 0.02 if c == target else 0.6}
        for c in range(10)
    ]  # fmt: skip
    return {"neural-cleanse": {"l1": l1}, "recovered-trigger": {"classes": rt}}


def pieces(target: int | None) -> list[Evidence]:
    v = values(target)
    named = (target,) if target is not None else ()
    supports = "backdoor" if named else "no_evidence"
    return [
        Evidence("neural-cleanse", "x", supports, named, v["neural-cleanse"]),
        Evidence("recovered-trigger", "x", supports, named, v["recovered-trigger"]),
    ]


def fitted() -> Calibration:
    return fit(model_rows(synthetic_rows(40)), {"source": "synthetic"})


def test_features_read_the_target_and_no_signal_where_a_piece_is_missing():
    rows = class_features(values(7), 10)
    assert len(rows) == 10 and all(len(r) == len(FEATURES) for r in rows)
    assert rows[7][COL["nc_smallest"]] == 1.0 and sum(r[COL["nc_smallest"]] for r in rows) == 1.0
    assert max(range(10), key=lambda c: rows[c][COL["nc_norm_ratio"]]) == 7
    assert max(range(10), key=lambda c: rows[c][COL["trigger_gap_excess"]]) == 7
    assert rows[7][COL["trigger_transfer"]] < -0.9 < rows[3][COL["trigger_transfer"]]
    for name in ("kd_log_p", "kd_excess", "ac_silhouette", "count_excess"):  # no training set: those pieces never ran
        assert all(r[COL[name]] == 0.0 for r in rows)
    kd = {"classes": [{"class": c, "p_value": 1e-33 if c == 2 else 1.0, "share": 0.3 if c == 2 else 0.07,
                       "prior": 0.1, "spread": 0.9} for c in range(10)]}  # fmt: skip
    rows = class_features(
        {**values(None), "kd-disagreement": kd, "activation-clustering": {"silhouette": [0.1] * 10}}, 10
    )
    assert rows[2][COL["kd_log_p"]] == pytest.approx(3.0) and rows[2][COL["kd_excess"]] == pytest.approx(0.2)
    assert rows[0][COL["kd_log_p"]] == 0.0 and rows[5][COL["ac_silhouette"]] == 0.1
    assert rows[2][COL["kd_x_trigger"]] == 0.0  # a funnel into 2 whose trigger is no better than the rest's
    backed = class_features({**values(2), "kd-disagreement": kd}, 10)  # the same funnel, and 2's trigger
    assert backed[2][COL["kd_x_trigger"]] == pytest.approx(0.2 * (0.95 - 0.37))
    assert backed[2][COL["kd_x_nc"]] > rows[2][COL["kd_x_nc"]] and backed[5][COL["kd_x_trigger"]] == 0.0
    assert all(r[COL["kd_doubt"]] == 0.0 for r in rows)  # no student belief stored (older reports): no signal
    believed = {"classes": [{**r, "student_p": 0.05 if r["class"] == 2 else 0.3} for r in kd["classes"]]}
    rows = class_features({**values(None), "kd-disagreement": believed}, 10)
    assert rows[2][COL["kd_doubt"]] == pytest.approx(0.9) and rows[4][COL["kd_doubt"]] == pytest.approx(0.4)
    believed["classes"][3]["student_p"] = 0.6  # the student finds the teacher's calls likely: no doubt
    assert class_features({**values(None), "kd-disagreement": believed}, 10)[3][COL["kd_doubt"]] == 0.0


def test_a_fit_separates_backdoored_from_clean_evidence_and_is_plain_numbers(tmp_path):
    cal = fitted()
    bad = cal.judge(values(4), 10)
    clean = cal.judge(values(None), 10)
    assert bad.status == "backdoor" and bad.target == 4 and bad.p_backdoor > 0.9 and bad.target_probability > 0.5
    assert clean.status == "no_evidence" and clean.p_backdoor < 0.1
    text = json.dumps(cal.to_dict())
    again = Calibration.from_dict(json.loads(text))  # numbers and names only: no code travels
    assert again == cal and again.judge(values(4), 10) == bad
    with pytest.raises(ValueError, match="features"):
        Calibration.from_dict({**cal.to_dict(), "features": ["something else"]})


def test_combine_takes_the_status_from_the_probability_and_keeps_the_rule_beside_it():
    cal = fitted()
    v = combine(pieces(4), NAMES, cal)
    assert v.status == "backdoor" and v.target_classes == (4,) and v.target_names == ("c4",)
    assert v.p_backdoor == pytest.approx(v.confidence) and v.likely_target == 4
    assert v.rule_status == agree(pieces(4), NAMES).status and "P(backdoor)" in v.rule
    d = v.to_dict()
    assert {"p_backdoor", "likely_target", "target_probability", "class_probabilities", "rule_status"} <= set(d)
    clean = combine(pieces(None), NAMES, cal)
    assert clean.status == "no_evidence" and clean.target_classes == () and clean.confidence > 0.9
    # the pieces' rule alone would call a lone recovered trigger inconclusive; the probability decides
    lone = [Evidence("recovered-trigger", "x", "backdoor", (4,), values(4)["recovered-trigger"])]
    assert agree(lone, NAMES).status == "inconclusive" and combine(lone, NAMES, cal).p_backdoor is not None


def test_the_shipped_calibration_is_what_the_documented_command_fits_on_the_calibration_part():
    cal = load()
    zoo = json.loads((ROOT / "benchmarks" / "results" / "zoo.json").read_text())
    calibration = [r for r in implanted(zoo["rows"])[0] if r["part"] == "calibration"]
    assert cal.fitted["models"] == len(calibration) >= 60  # of 96 recipes: those whose model was made in vain left out
    assert cal.fitted["backdoored"] == sum(r["truth"]["backdoored"] for r in calibration)
    refit = fit(model_rows(calibration), cal.fitted)
    assert refit.coef == pytest.approx(cal.coef, abs=1e-5) and refit.platt_a == pytest.approx(cal.platt_a, abs=1e-5)
    assert (cal.t_lo, cal.t_hi) == (0.2, 0.5) and CALIBRATION_FILE.suffix == ".json"


def test_a_known_trigger_that_captures_the_teacher_only_decides_the_status():
    cal = fitted()
    known = known_trigger_evidence(0.95, 0.03, 6, NAMES)
    assert known.supports == "backdoor" and known.classes == (6,) and "c6" in known.finding
    v = combine([*pieces(None), known], NAMES, cal)
    assert v.status == "backdoor" and v.target_classes == (6,) and "given trigger" in v.rule
    assert v.p_backdoor is not None and v.p_backdoor < 0.2  # the other evidence alone still says what it says
    for teacher, student in ((0.95, 0.9), (0.3, 0.0)):  # transfers to the student / does not capture the teacher
        weak = known_trigger_evidence(teacher, student, 6, NAMES)
        assert weak.supports == "no_evidence"
        assert combine([*pieces(None), weak], NAMES, cal).status == "no_evidence"


def test_the_fit_keeps_each_coefficient_on_its_side_and_is_scikit_learns_where_that_binds_nothing():
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(400, 3))
    y = (Z @ np.array([1.5, -1.0, 0.0]) + rng.normal(size=400) > 1.0).astype(int)
    free = LogisticRegression(C=1.0, class_weight="balanced").fit(Z, y)
    assert free.coef_[0][0] > 0 > free.coef_[0][1]
    ours = SignedLogistic(np.array([1, -1, 1])).fit(Z, y)  # the signs the data have: the same fit
    np.testing.assert_allclose(ours.coef_[:2], free.coef_[0][:2], atol=2e-3)
    wrong = SignedLogistic(np.array([1, 1, 1])).fit(Z, y)  # the second feature told to point the other way
    assert wrong.coef_[1] == 0.0 and wrong.coef_[0] > 0
    shipped = load()
    assert all(c * SIGNS[f] >= 0 for f, c in zip(shipped.features, shipped.coef, strict=True))


def test_cross_validation_scores_each_model_by_a_fit_that_never_saw_it():
    """benchmarks/calibrate.py --cv, how the shipped features and C were chosen: evidence that separates
    scores near 0; with every feature unweighted nothing is left to separate on, and it scores chance."""
    models = model_rows(synthetic_rows(40))
    assert cross_validate(models, SIGNS, 3.0, folds=5)["cross_entropy"] < 0.1
    blind = cross_validate(models, dict.fromkeys(FEATURES, 0), 3.0, folds=5)
    assert 0.65 < blind["cross_entropy"] < 0.75  # chance: 0.693
