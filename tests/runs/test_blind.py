"""The blind audit end to end: an audit without a trigger (or with --blind) writes a verdict, the
flip matrix and every detector's precision / recall with --known-poisons; the demo's blind
scenarios (issue 10's done-when) on a smaller-than-quick setup."""

from __future__ import annotations

import json

import pytest

from kdcore.config import from_dict
from kdcore.errors import ConfigError, InputError
from kdcore.runs.audit import run_audit
from kdcore.runs.configs import AuditConfig, DemoConfig
from kdcore.runs.demo import run_demo
from kdcore.verdict.rescore import rescore
from kdcore.verdict.rule import MIN_AGREEMENT
from tests.conftest import audit_config

KD_EPOCHS = 20  # digits: 500 unlabelled 8×8 images, about a second an epoch
VERDICT_KEYS = {"status", "target_classes", "target_names", "confidence", "rule", "evidence"}


@pytest.mark.slow
def test_audit_without_a_trigger_writes_a_verdict_and_scores_known_poisons(tmp_path, digits_files):
    poisons = tmp_path / "poisons.txt"
    poisons.write_text("\n".join(sorted(digits_files["poisons"])) + "\n")
    # a student distilled long enough to learn the task (2 epochs leave it at 28 % clean accuracy, and a
    # student that learnt nothing follows no recovered trigger: every class then looks like a backdoor's)
    cfg = audit_config(digits_files, trigger=None, known_poisons=str(poisons), kd_epochs=KD_EPOCHS)
    cfg = from_dict(AuditConfig, cfg)
    report = run_audit(cfg, tmp_path / "run")
    v = report["verdict"]
    assert VERDICT_KEYS <= set(v) and 0 <= v["confidence"] <= 1
    # the blind verdict finds the backdoor and its target, and the known poisons (the oracle) are recalled
    assert v["status"] == "backdoor" and v["target_classes"] == [7], v
    assert v["p_backdoor"] >= 0.5 and v["likely_target"] == 7 and v["target_probability"] > 0.5
    assert report["detox"]["recall"] >= 0.8, report["detox"]
    methods = [e["method"] for e in v["evidence"]]
    assert methods == ["kd-disagreement", "neural-cleanse", "recovered-trigger", "activation-clustering"]
    fm = report["flip_matrix"]
    assert len(fm["classes"]) == 10 and sum(map(sum, fm["counts"])) == report["detox"]["flagged"]
    n = len(digits_files["poisons"])
    assert report["detox"]["n_poison"] == n and report["detox"]["recall"] is not None
    assert report["activation_clustering"]["detection"]["n_poison"] == n
    assert {"neural-cleanse", "activation-clustering", "recovered-trigger", "kd-disagreement"} <= set(report["timings"])
    assert "evaluation_only" not in report
    # the 60 poisons relabelled 7 make class 7 ~1.5× the median class: the report remarks on it
    assert [n for n in report["notes"] if "holds" in n] == [next(n for n in report["notes"] if "class 7 holds" in n)]
    assert (tmp_path / "run" / "evidence" / "trigger_7.png").is_file()
    assert json.loads((tmp_path / "run" / "report.json").read_text())["verdict"] == v
    assert rescore(report) == v  # the stored numbers rebuild the same verdict (benchmarks/verdict.py --rescore)
    rows = report["activation_clustering"]["classes"]
    assert {"small_cluster_fraction", "silhouette"} <= set(rows[0])
    rt = next(e for e in v["evidence"] if e["method"] == "recovered-trigger")["values"]["classes"]
    assert [r["class"] for r in rt] == list(range(10))  # every class's flips are kept


@pytest.mark.slow
def test_a_clean_model_audited_blind_is_not_called_backdoored(tmp_path, digits_files, digits_models):
    """A clean digits model (the same split's clean training images, another seed), audited as a downloaded
    model is: no training set, no trigger."""
    model = str(digits_models / "clean-1.safetensors")
    cfg = audit_config(digits_files, trigger=None, train=False, model=model, kd_epochs=KD_EPOCHS)
    report = run_audit(from_dict(AuditConfig, cfg), tmp_path / "run")
    v = report["verdict"]
    assert v["status"] != "backdoor" and v["p_backdoor"] < 0.5, v
    assert [e["method"] for e in v["evidence"]] == ["kd-disagreement", "neural-cleanse", "recovered-trigger"]


@pytest.mark.slow
def test_a_student_that_learnt_nothing_leaves_the_verdict_inconclusive(tmp_path, digits_files):
    """One distillation epoch: the student agrees with the teacher on few clean images, and the audit
    says so instead of reading every comparison with it as a backdoor's sign."""
    cfg = audit_config(digits_files, trigger=None, train=False, kd_epochs=1)
    report = run_audit(from_dict(AuditConfig, cfg), tmp_path / "run")
    v = report["verdict"]
    agreement = next(e for e in v["evidence"] if e["method"] == "recovered-trigger")["values"]["agreement"]
    assert agreement < MIN_AGREEMENT, agreement
    assert v["status"] == "inconclusive" and v["target_classes"] == [], v
    assert "has not learnt the teacher" in v["rule"] and "distil for longer" in v["rule"]


@pytest.mark.slow
def test_an_audit_with_its_trigger_is_judged_with_the_trigger_as_evidence(tmp_path, digits_files):
    """Every audit is judged: the known trigger is measured on teacher and student and decides."""
    cfg = audit_config(digits_files, verdict=True, neural_cleanse={"steps": 60}, kd_epochs=KD_EPOCHS)
    report = run_audit(from_dict(AuditConfig, cfg), tmp_path / "run")
    v = report["verdict"]
    known = next(e for e in v["evidence"] if e["method"] == "known-trigger")
    assert known["supports"] == "backdoor" and known["classes"] == [7]
    assert known["values"]["teacher_asr"] == report["teacher"]["asr"] >= 0.8
    assert known["values"]["student_asr"] == report["student"]["asr"] <= 0.5 * report["teacher"]["asr"]
    assert v["status"] == "backdoor" and v["target_classes"] == [7] and "given trigger" in v["rule"]
    assert "evaluation_only" not in report  # the trigger is evidence here, not held back
    off = run_audit(from_dict(AuditConfig, audit_config(digits_files)), tmp_path / "quick")  # --no-verdict
    assert "verdict" not in off and off["teacher"]["asr"] == report["teacher"]["asr"]


def test_known_poisons_needs_a_training_set_and_a_good_file(tmp_path, digits_files):
    with pytest.raises(ConfigError, match="--train"):
        from_dict(AuditConfig, audit_config(digits_files, train=False, known_poisons="p.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("7/not-there.png\n")
    cfg = from_dict(AuditConfig, audit_config(digits_files, known_poisons=str(bad)))
    with pytest.raises(InputError, match="not in the training set"):
        run_audit(cfg, tmp_path / "run")


# Smaller than --quick, whose blind runs take 11–25 min each on 2 shared cores (Neural Cleanse alone
# ~500 s there). The real quick demo, run by hand (seed 0): attack → backdoor, [7], confidence 1.00
# (all four pieces name Sneaker); no_attack → inconclusive, confidence 0.40 (NC flags Shirt and Bag,
# but their recovered triggers transfer to the student: 34–42 % of its images flip).
# SMALL, measured by hand under the same load: attack → backdoor [7] in 723 s (training both models),
# no_attack → no_evidence in 127 s (the baseline cached).
SMALL = {
    "n_train": 4000,
    "n_clean": 1000,
    "n_poison": 120,
    "n_test": 500,
    "teacher": {"epochs": 4},
    "kd": {"distill": {"epochs": 8}, "finetune": {"epochs": 1}},
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["attack", "no_attack"])
def test_blind_demo(tmp_path, tmp_path_factory, scenario):
    cache = tmp_path_factory.getbasetemp() / "blind-demo-cache"  # the baseline trains once for both
    cfg = DemoConfig.preset(quick=True, **SMALL, scenario=scenario, blind=True, device="cpu", cache_dir=str(cache))
    report = run_demo(cfg, tmp_path / "run")
    v = report["verdict"]
    if scenario == "attack":
        assert v["status"] == "backdoor" and v["target_classes"] == [7], v
        assert report["activation_clustering"]["detection"]["n_poison"] == 120
    else:  # a clean model is not called backdoored (issue 20 asks for no_evidence: P 0.22 with an earlier fit)
        assert v["status"] != "backdoor" and v["p_backdoor"] < 0.5, v
    assert report["evaluation_only"] == ["asr", "poison_acc"]  # the true trigger, for comparison only
