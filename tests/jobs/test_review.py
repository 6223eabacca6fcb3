"""Reviewer verdicts (with their audit trail) and the refine run they feed, on a tiny real audit."""

from __future__ import annotations

import csv
import json

import pytest

from kdcore.config import from_dict
from kdcore.errors import ConfigError, InputError
from kdcore.jobs.review import Reviews
from kdcore.jobs.store import JobStore
from kdcore.runs import AuditConfig, RefineConfig, run_audit, run_refine
from tests.conftest import audit_config


def test_verdicts_keep_current_state_and_full_history(tmp_path):
    rv = Reviews(JobStore(tmp_path))
    assert rv.set("runA", [3, 5], "poison", reviewer="ana") == 2
    assert rv.set("runA", [5], "poison") == 0  # unchanged: no log entry
    assert rv.set("runA", [5], "clean", reviewer="ben", note="a real bag") == 1
    assert rv.set("runA", [3], None) == 1  # cleared
    assert {s: v.verdict for s, v in rv.get("runA").items()} == {5: "clean"}
    hist = rv.history("runA")
    assert [(h["sample"], h["verdict"], h["previous"]) for h in hist] == [
        (3, "poison", None),
        (5, "poison", None),
        (5, "clean", "poison"),
        (3, None, "poison"),
    ]
    assert hist[2]["reviewer"] == "ben" and hist[2]["note"] == "a real bag"
    assert rv.get("runB") == {}
    rows = list(csv.DictReader(rv.to_csv("runA").splitlines()))
    assert rows == [
        {
            "sample": "5",
            "verdict": "clean",
            "reviewer": "ben",
            "note": "a real bag",
            "decided_at_utc": rows[0]["decided_at_utc"],
        }
    ]
    with pytest.raises(InputError, match="Verdict must be"):
        rv.set("runA", [1], "maybe")


def test_refine_applies_verdicts_to_the_removal_set(digits_files, tmp_path):
    cfg = from_dict(AuditConfig, audit_config(digits_files, kd_epochs=10, ft_epochs=1))
    src = tmp_path / "audit"
    rep = run_audit(cfg, src)
    rows = list(csv.DictReader((src / "candidates.csv").open()))
    flagged = [int(r["index"]) for r in rows if r["flagged"] == "1"]
    unflagged = [int(r["index"]) for r in rows if r["flagged"] == "0"]
    assert len(flagged) >= 3
    verdicts = [(flagged[0], "clean"), (flagged[1], "unsure"), (unflagged[0], "poison"), (unflagged[1], "clean")]
    refine = from_dict(
        RefineConfig,
        {
            "source_run": str(src),
            "verdicts": verdicts,
            "device": "cpu",
            "finetune": {"epochs": 1, "lr": 1e-4, "val_fraction": 0.1},
        },
    )
    out = run_refine(refine, tmp_path / "refine")
    r = out["review"]
    assert r["flagged_by_detox"] == rep["detox"]["flagged"] == len(flagged)
    assert r["cleared"] == 1 and r["added"] == 1
    assert r["removed"] == len(flagged) - 1 + 1
    assert out["detox"]["flagged"] == r["removed"]
    assert out["finetuned"]["clean_acc"] > 0.5 and out["finetuned"]["asr"] is not None
    assert (tmp_path / "refine" / "models" / "finetuned.safetensors").exists()
    assert json.loads((tmp_path / "refine" / "config.json").read_text())["kind"] == "refine"


def test_refine_refuses_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="source_run"):
        RefineConfig()
    with pytest.raises(ConfigError, match="Unknown verdict"):
        RefineConfig(source_run="x", verdicts=((1, "maybe"),))
    with pytest.raises(InputError, match="missing"):
        RefineConfig(source_run=str(tmp_path)).check_inputs()
