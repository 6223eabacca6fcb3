"""The CLI end to end on scikit-learn's digits: a poisoned training set, a backdoored teacher
saved as .safetensors, image folders and zips written to disk, then `python -m kdcore audit`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def kdcore(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDAUDIT_HOME": str(env_home), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "kdcore", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _audit_args(s: dict, out: Path, *extra: str) -> list[str]:
    return [
        "audit",
        "--model",
        str(s["model"]),
        "--unlabeled",
        str(s["unlabeled"]),
        "--train",
        str(s["train"]),
        "--test",
        str(s["test"]),
        "--trigger",
        "badnets:target=7,size=2,margin=0",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--kd-epochs",
        "25",
        "--temperature",
        "20",
        "--no-progress",
        *extra,
    ]


def test_audit_end_to_end_removes_the_backdoor_and_reuses_stages(digits_files, tmp_path):
    out = tmp_path / "run"
    r = kdcore(*_audit_args(digits_files, out), env_home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Distilled" in r.stdout and "asr" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    for key in ("teacher", "student", "finetuned", "detox", "timings", "device", "config"):
        assert key in rep, key
    t, s, f = rep["teacher"], rep["student"], rep["finetuned"]
    assert t["asr"] >= 0.6, t  # the teacher really is backdoored
    assert s["asr"] <= 0.2 and f["asr"] <= 0.2, (s, f)
    assert f["clean_acc"] >= t["clean_acc"] - 0.1
    assert rep["data"]["unlabeled"] == {"images": 500, "skipped": 1, "skipped_files": ["broken.png"]}
    assert rep["config"]["trigger"]["target"] == 7

    rows = list(csv.DictReader((out / "candidates.csv").open()))
    assert len(rows) == 1000 and int(rep["detox"]["total"]) == 1000
    flagged = {r["source"] for r in rows if r["flagged"] == "1"}
    assert len(flagged) == rep["detox"]["flagged"]
    recall = len(flagged & digits_files["poisons"]) / len(digits_files["poisons"])
    assert recall >= 0.8, recall
    top = [r["source"] for r in rows[:30]]  # ranked by suspicion: poisons come first
    assert sum(src in digits_files["poisons"] for src in top) >= 20
    assert (out / "models" / "finetuned.safetensors").exists() and (out / "models" / "finetuned.json").exists()
    cm = (out / "confusion" / "teacher_poison.csv").read_text().splitlines()
    assert len(cm) == 11
    assert json.loads((out / "config.json").read_text())["kind"] == "audit"

    again = kdcore(*_audit_args(digits_files, out), env_home=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    rep2 = json.loads((out / "report.json").read_text())
    assert rep2["stages"]["distill"]["reused"] and rep2["stages"]["finetune"]["reused"]
    assert rep2["student"] == rep["student"] and rep2["finetuned"] == rep["finetuned"]


def test_audit_without_train_or_trigger_says_what_it_skipped(digits_files, tmp_path):
    out = tmp_path / "run"
    args = [
        "audit",
        "--model",
        str(digits_files["model"]),
        "--unlabeled",
        str(digits_files["unlabeled"]),
        "--test",
        str(digits_files["test"]),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--kd-epochs",
        "2",
        "--no-progress",
    ]
    r = kdcore(*args, env_home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["detox"] is None and rep["finetuned"] is None
    assert rep["teacher"]["asr"] is None and rep["teacher"]["clean_acc"] > 0.5
    assert any("No labelled training set" in n for n in rep["notes"])
    assert "No --trigger given" in r.stdout


class _Payload:
    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing-model", "does not exist"),
        ("payload", "pickle"),
        ("wrong-classes", "classes"),
        ("bad-trigger", "trigger"),
        ("no-images", "no image"),
    ],
)
def test_bad_input_exits_2_with_one_line(digits_files, tmp_path, case, expected):
    s = dict(digits_files)
    extra: list[str] = []
    canary = tmp_path / "canary"
    if case == "missing-model":
        s["model"] = tmp_path / "nope.safetensors"
    elif case == "payload":
        s["model"] = tmp_path / "evil.pt"
        torch.save({"w": torch.zeros(1), "x": _Payload(canary)}, s["model"])
        extra = ["--arch", "paper-cnn", "--num-classes", "10", "--input-shape", "1,8,8"]
    elif case == "wrong-classes":
        extra = ["--arch", "paper-cnn", "--num-classes", "3", "--input-shape", "1,8,8"]
    elif case == "no-images":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "a.txt").write_text("x")
        s["unlabeled"] = tmp_path / "empty"
    args = _audit_args(s, tmp_path / "run", *extra)
    if case == "bad-trigger":
        args[args.index("--trigger") + 1] = "badnets:target=7,where=nowhere"
    r = kdcore(*args, env_home=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("kdcore: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expected.lower() in lines[0].lower(), lines[0]
    assert not canary.exists()
