"""The `defend` run kind and CLI verb: every registered defense through one entry point, writing
one report shape, on scikit-learn's digits with a backdoored teacher saved to disk."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdcore.candidates import read_candidates
from kdcore.config import from_dict
from kdcore.data.folders import load_labeled
from kdcore.defenses import DEFENSES, Repairer
from kdcore.errors import ConfigError, InputError
from kdcore.evaluate import evaluate_model
from kdcore.models.loading import load_model
from kdcore.report import ROLES, models_of
from kdcore.runs.defend import DefendConfig, run_defend
from kdcore.triggers import BadNets
from tests.conftest import needs_fashion_mnist

ROOT = Path(__file__).resolve().parents[2]

# Settings that make each method take seconds on 8×8 digits (the methods' own tests check quality).
FAST = {
    "bcu": {"epochs": 2},
    "linf-pruning": {"steps": 4},
    "neural-cleanse": {"steps": 20, "n_images": 64},
    "activation-clustering": {},
    "fine-pruning": {"finetune": {"epochs": 1}},
    "nad": {"teacher_epochs": 1, "epochs": 1},
    "kd": {
        "distill": {"epochs": 2, "batch_size": 64},
        "finetune": {"epochs": 1, "lr": 1e-4, "val_fraction": 0.1, "patience": 0},
    },
}


def _audit(files: dict) -> dict:
    return {
        "model": str(files["model"]),
        "unlabeled": str(files["unlabeled"]),
        "train": str(files["train"]),
        "test": str(files["test"]),
        "trigger": BadNets(target=7, size=2, margin=0).to_dict(),
    }


def _config(files: dict, method: str, **kw) -> DefendConfig:
    d = {"method": method, "params": FAST[method], "audit": _audit(files), "device": "cpu"}
    if DEFENSES[method].needs_labels:
        d["clean_labeled"] = str(files["clean_labeled"])
    d.update(kw)
    return from_dict(DefendConfig, d)


def test_every_registered_method_has_fast_test_settings():
    assert set(FAST) == set(DEFENSES)


@pytest.mark.parametrize("method", sorted(DEFENSES))
def test_every_method_writes_the_same_report_shape(method, digits_files, tmp_path):
    report = run_defend(_config(digits_files, method), tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["method"] == report["method"] == method
    assert on_disk["family"] == DEFENSES[method].family
    assert on_disk["needs_labels"] == DEFENSES[method].needs_labels
    assert set(on_disk["suspect"]) >= {"clean_acc", "poison_acc", "asr"}
    assert on_disk["suspect"]["asr"] > 0.8  # the teacher is backdoored
    assert json.loads((tmp_path / "config.json").read_text())["kind"] == "defend"
    assert on_disk["method_wall_s"] > 0 and on_disk["wall_s"] >= on_disk["method_wall_s"]
    assert isinstance(on_disk["headline"], str) and on_disk["headline"] == report["headline"]
    assert on_disk["headline"] and "headline" not in on_disk["evidence"]
    family = DEFENSES[method].family
    if issubclass(DEFENSES[method], Repairer):
        # The saved repaired model reloads and scores exactly what the report says.
        model, spec = load_model(tmp_path / "models" / "repaired.safetensors", None, "cpu")
        test = load_labeled(digits_files["test"], spec.input_shape, None, name="test")
        ev = evaluate_model(model, spec, test, torch.device("cpu"), BadNets(target=7, size=2, margin=0))
        assert ev.clean_acc == pytest.approx(on_disk["repaired"]["clean_acc"])
        assert ev.asr == pytest.approx(on_disk["repaired"]["asr"])
    else:
        assert on_disk["repaired"] is None
    if family in ("detector", "repairer+detector"):
        rows = list(csv.DictReader((tmp_path / "candidates.csv").open()))
        assert len(rows) == on_disk["data"]["train"] == on_disk["detection"]["total"]
        assert sum(int(r["flagged"]) for r in rows) == on_disk["detection"]["flagged"]
        flagged_first = [int(r["flagged"]) for r in rows]
        assert flagged_first == sorted(flagged_first, reverse=True)
        typed = read_candidates(tmp_path / "candidates.csv")
        assert [c.index for c in typed] == [int(r["index"]) for r in rows]
        assert on_disk["detection"]["precision"] is None  # an audit's inputs carry no ground truth
    else:
        assert on_disk["detection"] is None and not (tmp_path / "candidates.csv").exists()
    if family == "inspector":
        assert on_disk["evidence_images"]
        for name in on_disk["evidence_images"]:
            assert (tmp_path / "evidence" / f"{name}.png").stat().st_size > 0


def test_unknown_method_and_bad_settings_are_refused_before_running(digits_files):
    with pytest.raises(ConfigError, match=r"Unknown defense 'nope'.*bcu"):
        from_dict(DefendConfig, {"method": "nope", "audit": _audit(digits_files)})
    with pytest.raises(ConfigError, match="Unknown key"):
        from_dict(DefendConfig, {"method": "bcu", "params": {"epoch": 3}, "audit": _audit(digits_files)})
    with pytest.raises(ConfigError, match="exactly one"):
        from_dict(DefendConfig, {"method": "bcu"})
    with pytest.raises(ConfigError, match="exactly one"):
        from_dict(DefendConfig, {"method": "bcu", "audit": _audit(digits_files), "source_run": "x"})


def test_inputs_are_checked_with_messages_that_say_what_to_give(digits_files, tmp_path):
    cfg = from_dict(DefendConfig, {"method": "bcu", "source_run": str(tmp_path)})
    with pytest.raises(InputError, match="not a kdcore run directory"):
        cfg.check_inputs()
    cfg = _config(digits_files, "fine-pruning", clean_labeled="")
    with pytest.raises(InputError, match=r"fine-pruning needs labelled clean images.*--clean-labeled"):
        run_defend(cfg, tmp_path / "run")


def kdcore(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDAUDIT_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kdcore", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_lists_every_method_and_runs_one(digits_files, tmp_path):
    r = kdcore("defend", "--help", home=tmp_path)
    assert r.returncode == 0
    for name in DEFENSES:
        assert name in r.stdout
    f = digits_files
    out = tmp_path / "nc"
    r = kdcore(
        "defend", "neural-cleanse", "--model", str(f["model"]), "--unlabeled", str(f["unlabeled"]),
        "--test", str(f["test"]), "--trigger", "badnets:target=7,size=2,margin=0", "--device", "cpu",
        "--params", json.dumps(FAST["neural-cleanse"]), "--out", str(out), "--no-progress",
        home=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "neural-cleanse (inspector)" in r.stdout and ROLES["teacher"] in r.stdout
    assert json.loads((out / "report.json").read_text())["method"] == "neural-cleanse"


def test_cli_runs_the_core_method_as_a_defense(digits_files, tmp_path):
    """`kdcore defend kd`: the core method through the defend run kind repairs and detects, with the
    same report shape (suspect, distilled student, repaired = fine-tuned student, detection)."""
    f = digits_files
    out = tmp_path / "kd"
    r = kdcore(
        "defend", "kd", "--model", str(f["model"]), "--unlabeled", str(f["unlabeled"]), "--train", str(f["train"]),
        "--test", str(f["test"]), "--trigger", "badnets:target=7,size=2,margin=0", "--device", "cpu",
        "--params", json.dumps(FAST["kd"]), "--out", str(out), "--no-progress",
        home=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "kd (repairer+detector)" in r.stdout and "Detection: flagged" in r.stdout
    report = json.loads((out / "report.json").read_text())
    assert set(models_of(report)) == {"teacher", "student", "repaired"}
    assert report["detection"]["flagged"] == sum(c.flagged for c in read_candidates(out / "candidates.csv")) > 0
    assert set(report["timings"]) == {"distill", "finetune"}
    assert (out / "models" / "repaired.safetensors").exists()
    assert sorted(p.name.split("-")[0] for p in (out / "stages").iterdir()) == ["distill", "finetune"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nope", "--demo"], "Unknown defense 'nope'"),
        (["bcu", "--param", "epochs"], "should look like key=value"),
        (["bcu", "--demo", "--params", "[1]"], "JSON object"),
        (["bcu", "--trigger", "sig:target=7"], "go with --demo"),
        (["bcu", "--run", "/nonexistent/run"], "not a kdcore run directory"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, expected, tmp_path):
    r = kdcore("defend", *args, home=tmp_path)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr and len(r.stderr.strip().splitlines()) == 1


@needs_fashion_mnist
def test_demo_inputs_follow_the_scenario(tmp_path):
    """`defend --demo` with scenario no_attack defends the clean baseline on clean data, as the demo audits it."""
    from kdcore.runs.configs import DemoConfig
    from kdcore.runs.defend import demo_inputs

    small = {"n_train": 600, "n_clean": 200, "n_poison": 30, "n_test": 100, "teacher": {"epochs": 1}}
    cpu = torch.device("cpu")
    attack = demo_inputs(DemoConfig.preset(quick=True, **small, cache_dir=str(tmp_path)), cpu)
    clean = demo_inputs(DemoConfig.preset(quick=True, **small, scenario="no_attack", cache_dir=str(tmp_path)), cpu)
    assert len(attack.poison_idx) == 30 and len(clean.poison_idx) == 0
    assert not torch.equal(attack.train.images, clean.train.images)  # the poisoned set carries stamps
    a, c = attack.model.state_dict(), clean.model.state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the baseline, not the backdoored teacher
