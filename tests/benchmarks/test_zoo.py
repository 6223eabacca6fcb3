"""The model zoo (benchmarks/zoo.py): the split fixed in benchmarks/zoo_split.json is the one the
recipes make, it has the sizes issue 20 asks for, and a made model is reused, its truth kept apart
from what the audit is given."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.zoo.archs import ARCHS  # noqa: E402
from benchmarks.zoo.build import Sizes, make  # noqa: E402
from benchmarks.zoo.jobs import AUDIT_KD, audit_config  # noqa: E402
from benchmarks.zoo.recipes import read_split, recipes  # noqa: E402
from kdcore.config import to_dict  # noqa: E402
from tests.conftest import needs_fashion_mnist  # noqa: E402

SPLIT = ROOT / "benchmarks" / "zoo_split.json"


def test_the_split_file_holds_exactly_the_recipes():
    assert read_split(SPLIT) == recipes(), "recipes changed after the split was fixed: see benchmarks/zoo/recipes.py"


def test_the_split_has_the_sizes_and_the_unseen_architecture_and_attack():
    rs = recipes()
    assert len({r.name for r in rs}) == len(rs)
    cal = [r for r in rs if r.part == "calibration"]
    held = [r for r in rs if r.part == "heldout"]
    fresh = [r for r in rs if r.part == "fresh"]
    third = [r for r in rs if r.part == "third"]
    fourth = [r for r in rs if r.part == "fourth"]
    fifth = [r for r in rs if r.part == "fifth"]
    assert len(cal) + len(held) + len(fresh) + len(third) + len(fourth) + len(fifth) == len(rs)
    clean_cal = sum(r.attack == "clean" for r in cal)
    assert len(cal) >= 30 and 0.4 <= clean_cal / len(cal) <= 0.6
    assert len(held) >= 60 and sum(r.attack == "clean" for r in held) >= 30
    assert sum(r.attack != "clean" for r in held) >= 30
    archs = {r.arch for r in held}
    assert len(archs) >= 5 and sum(ARCHS[a][0] != "registry" for a in archs) >= 2
    assert archs - {r.arch for r in cal}, "no architecture that calibration never sees"
    assert {r.attack for r in held} - {r.attack for r in cal} - {"clean"}, "no attack that calibration never sees"
    assert not {r.seed for r in cal} & {r.seed for r in held + fresh}, "held-out models need other seeds"
    assert not {r.seed for r in held} & {r.seed for r in fresh}
    assert not {r.seed for r in cal + held + fresh} & {r.seed for r in third}
    assert not {r.seed for r in cal + held + fresh + third} & {r.seed for r in fourth}
    assert not {r.seed for r in cal + held + fresh + third + fourth} & {r.seed for r in fifth}
    assert len(fifth) == 16 and sum(r.attack == "clean" for r in fifth) == 8
    # the third part scores the shipped fit cleanly; smaller, but half clean, with the unseen net and attack
    assert len(third) >= 30 and sum(r.attack == "clean" for r in third) == len(third) // 2
    assert {r.arch for r in third} - {r.arch for r in cal} and {r.attack for r in third} - {r.attack for r in cal}
    for part in (held, fresh, fourth):  # each held-out part is whole on its own
        archs = {r.arch for r in part}
        assert len(part) >= 60 and sum(r.attack == "clean" for r in part) >= 30 and len(archs) >= 5
        assert archs - {r.arch for r in cal} and {r.attack for r in part} - {r.attack for r in cal} - {"clean"}
    rates = [r.rate for r in rs if r.attack != "clean"]
    assert min(rates) <= 0.005 and max(rates) >= 0.10
    assert {r.trigger["size"] for r in rs if r.attack == "badnets"} >= {1, 2, 3, 4, 5}
    assert any(r.trigger and r.trigger.get("source") is not None for r in cal)
    assert {"label-noise", "imbalance", "short", "shirt", "merge"} <= {r.hard for r in cal} & {r.hard for r in held}


@needs_fashion_mnist
def test_a_made_model_is_reused_and_its_truth_is_not_given_to_the_audit(tmp_path: Path):
    recipe = next(r for r in recipes() if r.attack == "badnets" and r.arch == "paper-cnn")
    sizes = Sizes(n_clean=50, n_test=50, n_train=200, epochs=1)
    first = make(recipe, tmp_path, sizes)
    again = make(replace(recipe, name="renamed", part="heldout"), tmp_path, sizes)  # same content, other name
    assert not first.reused and again.reused and again.model == first.model
    truth = json.loads((tmp_path / recipe.name / "truth.json").read_text())
    assert truth["backdoored"] and truth["target"] == recipe.target and truth["n_poison"] == 5  # 2.5 % of 200
    with zipfile.ZipFile(first.file("train.zip")) as z:
        names = z.namelist()
    assert len(names) == 200 and all(f in names for f in truth["poison_files"])
    assert all(f.startswith(("Sneaker/",)) for f in truth["poison_files"])  # relabelled to the target, 7
    cfg = to_dict(audit_config(recipe, first, "cpu", AUDIT_KD, {}))
    assert cfg["blind"] and cfg["trigger"] is None and not cfg["known_poisons"]
    assert str(tmp_path / recipe.name) not in json.dumps(cfg)  # the truth's folder is not among its inputs


def _zoo_script():
    """benchmarks/zoo.py (its name is taken by the benchmarks.zoo package)."""
    spec = importlib.util.spec_from_file_location("zoo_script", ROOT / "benchmarks" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_of_one_part_keeps_the_other_parts_rows(tmp_path: Path, monkeypatch):
    """`--part heldout` once wrote results/zoo.json with the held-out rows alone: every calibration row
    was dropped from the file the calibration is fitted on."""
    zoo = _zoo_script()
    measure = zoo.sgemm_gflops
    rs = recipes()
    cal = next(r for r in rs if r.part == "calibration")
    fresh = next(r for r in rs if r.part == "fresh")
    beside = {"name": fresh.name, "part": fresh.part, "outcome": "right", "truth": {"backdoored": True}}
    # a model added to the split after this run read its recipes, audited by a run started since
    newer = {"name": "cal-clean-paper-cnn-s999", "part": "calibration", "outcome": "right"}
    newer["truth"] = {"backdoored": False}

    def measured_while_another_run_saves(device, smoke=False):  # a run of --part fresh beside this one
        stored = json.loads((results / "zoo.json").read_text())
        (results / "zoo.json").write_text(json.dumps({**stored, "rows": stored["rows"] + [beside, newer]}))
        return measure(device, smoke=True)  # not a minute

    monkeypatch.setattr(zoo, "sgemm_gflops", measured_while_another_run_saves)
    held = next(r for r in rs if r.part == "heldout" and r.attack != "clean")
    out, results = tmp_path / "out", tmp_path / "results"
    (out / held.name).mkdir(parents=True)  # made, its implant failed: a row without training or audit
    truth = {"backdoored": True, "target": held.target, "clean_acc": 0.8, "asr": 0.1, "train_s": 1.0}
    (out / held.name / "truth.json").write_text(json.dumps(truth))
    setup = {"sizes": vars(Sizes()), "audit_kd": zoo.AUDIT_KD, "neural_cleanse": zoo.AUDIT_NC, "split": SPLIT.name}
    kept = {"name": cal.name, "part": cal.part, "outcome": "right", "truth": {"backdoored": True}}
    results.mkdir()
    (results / "zoo.json").write_text(json.dumps({"setup": setup, "rows": [kept]}))
    args = ["--part", "heldout", "--only", f"{cal.name},{held.name}", "--device", "cpu"]
    args += ["--out", str(out), "--results", str(results)]
    zoo.run(zoo.parser().parse_args(args), out)
    rows = {r["name"]: r for r in json.loads((results / "zoo.json").read_text())["rows"]}
    assert rows[cal.name] == kept  # not selected by --part: kept as stored
    assert rows[fresh.name] == beside  # written by the other run after this one started: not written over
    assert rows[newer["name"]] == newer  # a model this run's recipes do not know: kept, not dropped
    assert rows[held.name]["outcome"] == "implant failed"


def test_models_are_made_one_architecture_after_another_so_a_partial_run_covers_each():
    zoo = _zoo_script()
    held = [r for r in recipes() if r.part == "heldout"]
    order = zoo.by_architecture(held)
    assert sorted(r.name for r in order) == sorted(r.name for r in held)
    archs = {r.arch for r in held}
    assert {r.arch for r in order[: len(archs)]} == archs  # the first of each architecture comes first
    assert [r for r in order if r.arch == "paper-cnn"] == [r for r in held if r.arch == "paper-cnn"]


def test_while_audits_are_queued_the_zoo_keeps_its_workers_alive(tmp_path: Path, monkeypatch):
    """Workers drain and exit when the queue is empty. The zoo started new ones only once all had exited,
    so a run whose first audit was a ResNet-18's (25 min) left the other worker gone and every later audit
    queued behind it. Now it tops up to `--workers` whenever one is queued."""
    import subprocess

    from benchmarks.zoo import jobs

    started: list[int] = []

    def fake_start(data_dir, executor, n, device, ray_address, logs):  # a worker: a process that lives a while
        started.append(n)
        return [subprocess.Popen(["sleep", "60"]) for _ in range(n)]

    monkeypatch.setattr(jobs, "start_workers", fake_start)
    audits = jobs.Audits(tmp_path, "local", 2, "cpu")
    (tmp_path / "m.pt").write_bytes(b"x")  # never read: the workers are stand-ins
    (tmp_path / "clean").mkdir()
    cfg = {"model": str(tmp_path / "m.pt"), "unlabeled": str(tmp_path / "clean"), "device": "cpu"}
    ids = [audits.store.submit("audit", cfg, label=f"zoo: {i}").id for i in range(3)]
    try:
        audits.keep_running(ids)
        assert started == [2] and audits.alive()
        audits.procs[0].kill()  # one drained the queue as it looked then, and exited
        audits.procs[0].wait()
        audits.keep_running(ids)
        assert started == [2, 1] and sum(p.poll() is None for p in audits.procs) == 2
        audits.keep_running(ids)  # both alive: nothing more
        assert started == [2, 1]
        for i in ids:
            audits.store.cancel(i)
        audits.procs[0].kill()
        audits.procs[0].wait()
        audits.keep_running(ids)  # nothing queued: no new worker
        assert started == [2, 1]
    finally:
        audits.stop()


def test_an_audit_whose_worker_was_stopped_is_queued_again_once(tmp_path: Path):
    """Two zoo runs share one queue; the first to end stopped its workers in the middle of the other's two
    audits, which the other then left unaudited ("interrupted")."""
    from benchmarks.zoo import jobs

    audits = jobs.Audits(tmp_path, "local", 1, "cpu")
    (tmp_path / "m.pt").write_bytes(b"x")  # never read: no worker runs
    (tmp_path / "clean").mkdir()
    cfg = {"model": str(tmp_path / "m.pt"), "unlabeled": str(tmp_path / "clean"), "device": "cpu"}
    job = audits.store.submit("audit", cfg, label="zoo: m", run_dir=str(tmp_path / "m" / "audit"))
    audits.store.claim("cpu", 1, job.id)
    audits.store.finish(job.id, "interrupted", "the worker was stopped")
    again = audits.again(audits.store.get(job.id))
    assert again is not None and again.state == "queued" and again.run_dir == job.run_dir
    audits.store.claim("cpu", 1, again.id)
    audits.store.finish(again.id, "interrupted", "the worker was stopped")
    assert audits.again(audits.store.get(again.id)) is None  # once: a second stop is reported, not looped
    failed = audits.store.submit("audit", cfg, label="zoo: n", run_dir=str(tmp_path / "n" / "audit"))
    audits.store.claim("cpu", 1, failed.id)
    audits.store.finish(failed.id, "failed", "InputError")
    assert audits.again(audits.store.get(failed.id)) is None  # a failure is the model's: not retried


def test_a_stored_audit_without_the_students_belief_gets_it_from_its_candidates(tmp_path: Path):
    """Audits made before the belief was kept (kdcore.verdict.kd_disagreement.student_belief) are read
    again with it (`zoo.py --rows-only`): the same numbers the audit would keep, from its candidates.csv."""
    import torch

    from kdcore.candidates import ranked_rows, write_candidates
    from kdcore.verdict.kd_disagreement import disagreement_structure, student_belief

    zoo = _zoo_script()
    g = torch.Generator().manual_seed(0)
    n, k = 300, 10
    teacher = torch.randint(0, k, (n,), generator=g)
    student = torch.where(torch.rand(n, generator=g) < 0.2, (teacher + 1) % k, teacher)
    flagged = teacher != student
    p = torch.where(flagged, torch.rand(n, generator=g) * 0.5, 0.5 + torch.rand(n, generator=g) * 0.5)
    extra = {"teacher_pred": teacher, "student_pred": student, "teacher_conf": torch.full((n,), 0.9), "student_conf": p}
    audit = tmp_path / "audit"
    audit.mkdir()
    write_candidates(audit / "candidates.csv", ranked_rows(0.9 - p, flagged, teacher, per_sample=extra))
    counts = [[0] * k for _ in range(k)]
    for t, s in zip(teacher[flagged].tolist(), student[flagged].tolist(), strict=True):
        counts[t][s] += 1
    old = disagreement_structure(counts, torch.bincount(teacher, minlength=k).tolist())  # no belief kept
    report = {"verdict": {"evidence": [{"method": "kd-disagreement", "supports": "no_evidence", "classes": [],
                                        "values": {"classes": old}}]}}  # fmt: skip
    recipe = next(r for r in recipes() if r.attack == "clean")
    truth = {"backdoored": False, "target": None}
    row = zoo.row_of(recipe, truth, report, None, audit)
    got = [r.get("student_p") for r in row["evidence"]["kd-disagreement"]["values"]["classes"]]
    # candidates.csv keeps 5 decimals of the probabilities
    want = student_belief(teacher, p, flagged, k)
    assert all(w is not None for w in want) and got == pytest.approx([round(w, 4) for w in want], abs=2e-4)
    assert (
        "student_p"
        not in zoo.row_of(recipe, truth, report, None)["evidence"]["kd-disagreement"]["values"]["classes"][0]
    )  # no audit folder given: nothing to read it from
