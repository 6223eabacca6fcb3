"""The CLI end to end on scikit-learn's digits: a poisoned training set, a backdoored teacher
saved as .safetensors, image folders and zips written to disk, then `python -m kdcore audit`."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def kdcore(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDAUDIT_HOME": str(env_home), "OMP_NUM_THREADS": "1"}
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
        "--no-verdict",  # the verdict's own tests judge; these check the pipeline
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
    # One note per fact, in the engine's words (no CLI flag: the dashboard shows the same notes).
    assert r.stdout.count("not measured") == 1, r.stdout
    assert "Note: No trigger given: poison_acc and asr were not measured.\n" in r.stdout


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


# ---- the parser: flags generated from the configs, --quick with --config, help that cannot drift ----


def _help(*kind: str) -> str:
    from kdcore.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    p = sub[kind[0]]
    for name in kind[1:]:
        p = next(a for a in p._actions if a.dest == "jobs_command").choices[name]
    return " ".join(p.format_help().split())


@pytest.mark.parametrize("kind", ["demo", "audit", "sweep"])
def test_every_distill_setting_has_a_flag_whose_help_shows_the_default(kind):
    from kdcore.cli.flags import flag_name
    from kdcore.distill import DistillConfig

    text = _help(kind)
    for f in dataclasses.fields(DistillConfig):
        flag = flag_name(f"kd.distill.{f.name}")
        assert flag in text, flag
        shown = {True: "default True", False: "default False"}.get(f.default, f"default {f.default}")
        assert shown in text, (flag, shown)
    assert "--temperature" in text and "--batch-size" in text and "--augment" in text  # the short names stay


def test_jobs_submit_lists_every_run_kind_and_each_has_a_command():
    from kdcore.cli import COMMANDS, kind_of
    from kdcore.runs import KINDS

    assert sorted(kind_of(c) for c in COMMANDS) == sorted(KINDS)  # audit-many runs the kind audit_many

    assert f"KIND is one of {', '.join(sorted(COMMANDS))}" in _help("jobs", "submit")


def test_flags_override_the_file_and_quick_comes_first(tmp_path):
    from kdcore.cli import resolve_config
    from kdcore.runs import DemoConfig, SweepConfig

    assert resolve_config(["demo", "--quick", "--seed", "0"]) == DemoConfig.preset(quick=True)
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"kind": "demo", "n_poison": 150, "seed": 1, "kd": {"distill": {"epochs": 4}}}))
    quick = DemoConfig.preset(quick=True)
    cfg = resolve_config(["demo", "--quick", "--config", str(cfg_file), "--seed", "2"])
    assert (cfg.n_train, cfg.teacher.epochs, cfg.kd.finetune.epochs) == (quick.n_train, 5, 3)  # quick sizes
    assert cfg.n_poison == 150 and cfg.kd.distill.epochs == 4  # then the file
    assert cfg.seed == 2  # then the flags
    full = resolve_config(["demo", "--config", str(cfg_file), "--kd-epochs", "7", "--ft-epochs", "2"])
    assert full.n_train == DemoConfig().n_train and full.kd.distill.epochs == 7 and full.n_poison == 150
    assert full.kd.finetune == dataclasses.replace(DemoConfig().kd.finetune, epochs=2)  # other defaults kept
    sweep = resolve_config(["sweep", "--quick", "--teacher-epochs", "2", "--temperature", "9", "--budgets", "100,200"])
    assert sweep.budgets == (100, 200) and sweep.setup.teacher.epochs == 2 and sweep.setup.kd.distill.temperature == 9
    assert sweep.setup.kd.distill.epochs == SweepConfig.preset(quick=True).setup.kd.distill.epochs


def test_generated_flags_types_choices_and_bools():
    from kdcore.cli import resolve_config

    a = resolve_config(
        [
            *("audit", "--model", "m.pt", "--unlabeled", "u", "--input-shape", "1, 8,8", "--mean", "0.5,0.4"),
            *("--class-names", "a, b", "--augment", "--ft-optimizer", "sgd", "--no-kd-cache-teacher"),
        ]
    )
    assert a.input_shape == (1, 8, 8) and a.mean == (0.5, 0.4) and a.class_names == ("a", "b")
    assert a.kd.distill.augment and not a.kd.distill.cache_teacher and a.kd.finetune.optimizer == "sgd"
    with pytest.raises(SystemExit):
        resolve_config(["audit", "--model", "m.pt", "--unlabeled", "u", "--ft-optimizer", "rmsprop"])


def test_bad_list_value_is_one_line_exit_2(capsys):
    from kdcore.cli import main

    assert main(["audit", "--model", "m.pt", "--unlabeled", "u", "--input-shape", "1,a", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kdcore: error: --input-shape expects comma-separated integers; got '1,a'"]


def test_model_flags_of_issue_9_on_audit_and_defend(tmp_path):
    from kdcore.cli import resolve_config

    arch = tmp_path / "net.py"
    arch.write_text("")
    flags = [
        *("--arch-file", f"{arch}:Net", "--num-classes", "10", "--arch-kwargs", '{"width": 8, "act": "relu"}'),
        *("--layers", "last_conv=features.3,penultimate=fc1"),
    ]
    for argv in (
        ["audit", "--model", "m.pt", "--unlabeled", "u"],
        ["defend", "bcu", "--model", "m.pt", "--unlabeled", "u"],
    ):
        cfg = resolve_config([*argv, *flags])
        cfg = cfg if argv[0] == "audit" else cfg.audit
        assert cfg.arch_file == f"{arch.resolve()}:Net" and len(cfg.arch_file_sha256) == 64
        assert cfg.arch_kwargs == {"width": 8, "act": "relu"}
        assert cfg.layer_choice() == {"last_conv": "features.3", "penultimate": "fc1"}
    text = _help("audit")
    for flag in ("--arch-file", "--arch-kwargs", "--layers", "--trust-code"):
        assert flag in text and flag in _help("defend"), flag


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--arch-kwargs", "{depth: 2}"], "--arch-kwargs expects a JSON object; got '{depth: 2}'"),
        (["--arch-kwargs", "[2]"], "--arch-kwargs expects a JSON object like"),
        (["--layers", "conv=x"], "--layers takes ROLE=NAME pairs with ROLE one of last_conv, penultimate"),
        (["--arch", "timm:resnet18"], "Give --arch and --num-classes together: --arch timm:resnet18 needs"),
    ],
)
def test_bad_model_flags_are_one_line_exit_2(capsys, extra, expected):
    from kdcore.cli import main

    assert main(["audit", "--model", "m.pt", "--unlabeled", "u", *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kdcore: error: {expected}"), err
