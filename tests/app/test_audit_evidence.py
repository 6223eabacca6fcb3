"""Defenses shows the evidence an audit gathered for its own verdict (Neural Cleanse on the suspect,
activation clustering on the training set), where the verdict card's "→ Defenses" links lead, before
any other defense has run (issue 20: "the audit's own evidence is shown nowhere")."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from kdcore.defenses.evidence import write_evidence
from kdcore.jobs.store import JobStore

ROOT = Path(__file__).resolve().parents[2]
NAMES = [str(i) for i in range(10)]


def nc_evidence() -> dict:
    l1 = [30.0 - (20.0 if c == 7 else 0.0) + c * 0.1 for c in range(10)]
    rows = [
        {"class": c, "name": NAMES[c], "l1": l1[c], "anomaly_index": 3.4 if c == 7 else 0.5, "flagged": c == 7}
        for c in range(10)
    ]
    return {
        "headline": "backdoor target: 7 (index 3.40 > 2)",
        "classes": rows,
        "flagged": [7],
        "flagged_names": ["7"],
        "most_anomalous": {"class": 7, "name": "7", "anomaly_index": 3.4},
        "threshold": 2.0,
    }


def ac_evidence() -> dict:
    rows = [
        {"class": c, "name": NAMES[c], "n": 100, "small_cluster_fraction": 0.3 if c == 7 else 0.45,
         "small_cluster_size": 30 if c == 7 else 45, "silhouette": 0.52 if c == 7 else 0.2, "poisoned": c == 7}
        for c in range(10)
    ]  # fmt: skip
    return {"classes": rows, "poisoned_classes": [7], "size_threshold": 0.5, "silhouette_threshold": 0.38}


def open_defenses(job: int) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app_pages" / "defenses.py"), default_timeout=60)
    at.query_params["job"] = str(job)
    return at.run(timeout=60)


def test_an_audits_own_neural_cleanse_and_clustering_are_shown(fake_runs):
    job = fake_runs({"neural_cleanse": nc_evidence(), "activation_clustering": ac_evidence()})
    run_dir = Path(JobStore(os.environ["KDAUDIT_HOME"]).get(job).run_dir)  # fake_runs' private home
    write_evidence(run_dir, {f"trigger_{c}": torch.full((1, 8, 8), 20 * c, dtype=torch.uint8) for c in range(10)})
    at = open_defenses(job)
    assert not at.exception, at.exception
    md = " ".join(m.value for m in at.markdown)
    assert "Gathered by the audit itself for its verdict" in md
    assert "Neural Cleanse on the suspect model" in md and "Activation clustering on the training set" in md
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["flagged classes"] == "7" and metrics["anomaly index"] == "3.4"
    assert any("Recovered triggers" in m.value for m in at.markdown)
    assert "backdoor target: 7" in " ".join(c.value for c in at.caption)
    assert len(at.dataframe) >= 1 and "Poisoned classes: 7" in " ".join(c.value for c in at.caption)


def test_an_audit_without_gathered_evidence_says_so(fake_runs):
    at = open_defenses(fake_runs({"neural_cleanse": None, "activation_clustering": None}))
    assert not at.exception, at.exception
    assert "Gathered by the audit itself" not in " ".join(m.value for m in at.markdown)
    assert "The evidence of a finished defense appears here." in [c.value for c in at.caption]
