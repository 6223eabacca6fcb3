"""Audits of many models (`kdcore audit-many`): three tiny digits models, one backdoored (BadNets →
7), in one process and as a fan-out of jobs on a local worker; what is refused before anything runs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.cli import main
from kdcore.jobs.store import JobStore
from kdcore.jobs.worker import run_job
from kdcore.runs.audit_many import p_backdoor

ROOT = Path(__file__).resolve().parents[2]
# Short audits: the verdict, not the repair, is what is tested (one fine-tuning epoch), but a student
# distilled long enough to learn its teacher (after 4 epochs it agreed with it on 68 % of the digits, and a
# clean model's recovered triggers then flipped the teacher and not the student: P(backdoor) 0.60)
QUICK = ("--kd-epochs", "20", "--batch-size", "64", "--ft-epochs", "1")


def shared(files: dict) -> list[str]:
    return ["--unlabeled", str(files["unlabeled"]), "--train", str(files["train"]), "--test", str(files["test"])]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_backdoored_first(rows: list[dict]) -> None:
    first = rows[0]
    assert first["model"] == "backdoored.safetensors", rows
    assert first["status"] == "backdoor" and first["target"] == "7", first
    assert all(r["status"] != "backdoor" for r in rows[1:]), rows  # the clean models raise no alarm
    p = [float(r["p_backdoor"]) for r in rows]
    assert p == sorted(p, reverse=True) and p[0] > p[1]
    assert all(0.9 < float(r["clean_acc"]) <= 1 for r in rows)  # the teachers' clean accuracy, with --test


@pytest.mark.slow
def test_audit_many_in_process_ranks_the_backdoored_model_first(digits_models, digits_files, tmp_path):
    out = tmp_path / "run"
    args = ["audit-many", str(digits_models), *shared(digits_files), *QUICK, "--device", "cpu", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    rows = read_csv(out / "models.csv")
    assert len(rows) == 3 and [r["rank"] for r in rows] == ["1", "2", "3"]
    assert_backdoored_first(rows)
    report = json.loads((out / "report.json").read_text())
    assert [r["model"] for r in report["rows"]] == [r["model"] for r in rows] and report["succeeded"] == 3
    for r in report["rows"]:
        part = json.loads((Path(r["run_dir"]) / "report.json").read_text())
        assert part["config"]["blind"] is True and part["verdict"]["status"] == r["status"]
        assert r["wall_s"] == part["wall_s"] and Path(r["run_dir"]).parent == out / "parts"
    assert [r["p_source"] for r in report["rows"]] == ["calibrated"] * 3  # the verdict's own P(backdoor)
    assert [r["p_backdoor"] for r in report["rows"]] == sorted((r["p_backdoor"] for r in report["rows"]), reverse=True)


def test_p_backdoor_prefers_the_verdicts_own_and_else_ranks_by_status():
    assert p_backdoor({"status": "no_evidence", "confidence": 0.2, "p_backdoor": 0.93}) == (0.93, "calibrated")
    ranked = [
        p_backdoor({"status": s, "confidence": c})[0]
        for s, c in (("backdoor", 0.2), ("inconclusive", 0.9), ("no_evidence", 0.1), ("no_evidence", 1.0))
    ]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] > 0.5 > ranked[2] > ranked[3] == 0.0
    assert p_backdoor(None) == (None, "")


def kdcore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdcore", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def run_queue(store: JobStore) -> list[int]:
    ran = []
    while (job := store.claim("cpu", os.getpid())) is not None:
        run_job(store, job, "cpu")
        ran.append(job.id)
    return ran


@pytest.mark.slow
def test_audit_many_as_jobs_fans_out_and_a_failed_model_is_a_row(digits_models, digits_files, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(digits_models, models)
    data = tmp_path / "home"
    submit = ("jobs", "submit", "audit-many", str(models), *shared(digits_files), *QUICK, "--json")
    r = kdcore(*submit, "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    store = JobStore(data)
    parts = store.group(job["id"])
    assert job["kind"] == "audit_many" and job["config"]["gather"] and len(parts) == 3
    assert all(p.kind == "audit" and p.config["blind"] is True for p in parts)
    assert [Path(p.config["model"]).name for p in parts] == [
        "backdoored.safetensors",
        "clean-1.safetensors",
        "clean-2.safetensors",
    ]
    (models / "clean-2.safetensors").write_bytes(b"not a model any more")  # its part fails when it runs
    assert run_queue(store) == [*(p.id for p in parts), job["id"]]  # the parts, then the gathering
    done = store.get(job["id"])
    assert done.state == "succeeded", done.error  # one failed model does not fail the whole
    assert store.get(parts[2].id).state == "failed"
    rows = read_csv(Path(done.run_dir) / "models.csv")
    assert len(rows) == 3 and rows[-1]["model"] == "clean-2.safetensors"
    assert rows[-1]["state"] == "failed" and "ModelLoadError" in rows[-1]["error"] and not rows[-1]["p_backdoor"]
    assert_backdoored_first(rows[:2])
    assert rows[0]["run_dir"] == parts[0].run_dir


def test_audit_many_refuses_what_it_cannot_audit_before_anything_runs(digits_models, digits_files, tmp_path):
    data = tmp_path / "home"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no model here")
    listed = tmp_path / "models.txt"
    listed.write_text(f"# the suspects\n{digits_models / 'backdoored.safetensors'}\n\nmissing.onnx\n")
    broken = tmp_path / "broken"
    shutil.copytree(digits_models, broken)
    (broken / "garbage.onnx").write_bytes(b"\x08\x01 not an onnx graph")
    for source, words in (
        (empty, ["holds no model", ".safetensors", ".onnx"]),
        (listed, ["1 of 2 listed model(s) do not exist", "missing.onnx (line 4)"]),
        (broken, ["1 of 4 model(s) cannot be audited", "garbage.onnx (", "nothing was run"]),
        (digits_models / "clean-1.safetensors", ["is a model, not a folder or a list"]),
    ):
        submit = ("jobs", "submit", "audit-many", str(source), *shared(digits_files))
        r = kdcore(*submit, "--data-dir", str(data))
        assert r.returncode == 2, (source, r.stdout, r.stderr)
        err = " ".join(r.stderr.split())
        assert all(w in err for w in words), (words, err)
        assert "Traceback" not in r.stderr
        assert main(["audit-many", str(source), *shared(digits_files), "--out", str(tmp_path / "out")]) == 2
        assert not (tmp_path / "out").exists()  # refused before a run directory was made
    assert JobStore(data).list() == []  # nothing queued
