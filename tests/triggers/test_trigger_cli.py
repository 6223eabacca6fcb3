"""Triggers on the command line: `--trigger patch:...` / `blend:...` and `--triggered-test` parse,
round-trip through JSON and config.json, and every bad trigger file is one line on stderr, exit 2."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from kdcore.cli import EXIT_INPUT, main, resolve_config
from kdcore.config import to_dict
from kdcore.evaluate import evaluate_model
from kdcore.triggers import Trigger
from tests.conftest import TRIGGER, _write_png
from tests.triggers.conftest import save_png

BASE = ["audit", "--model", "m.safetensors", "--unlabeled", "u", "--test", "t.zip"]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdcore: error:"), err
    return err[0]


def test_patch_parses_and_round_trips_through_json_and_config(trigger_files, tmp_path) -> None:
    cfg = resolve_config([*BASE, "--trigger", f"patch:image={trigger_files['rgba']},x=2,y=3,alpha=0.5,target=7"])
    t = cfg.trigger
    assert t["kind"] == "patch" and t["target"] == 7 and (t["x"], t["y"], t["alpha"]) == (2, 3, 0.5)
    assert t["image"] == str(trigger_files["rgba"].resolve()) and len(t["image_sha256"]) == 64
    assert resolve_config([*BASE, "--trigger", json.dumps(t)]).trigger == t
    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_dict(cfg)))
    assert resolve_config(["audit", "--config", str(path)]) == cfg
    blend = resolve_config([*BASE, "--trigger", f"blend:image={trigger_files['logo']},alpha=0.2,target=1"]).trigger
    assert Trigger.from_dict(blend).to_dict() == blend and blend["alpha"] == 0.2


def test_triggered_test_and_target(trigger_files) -> None:
    cfg = resolve_config([*BASE, "--triggered-test", str(trigger_files["triggered"]), "--target", "7"])
    assert cfg.trigger == {"kind": "triggered", "target": 7, "source": None, "path": str(trigger_files["triggered"])}
    same = resolve_config([*BASE, "--trigger", f"triggered:path={trigger_files['triggered']},target=7"])
    assert same == cfg


def _bad_cases(f: dict, tmp) -> dict[str, tuple[list[str], str]]:
    not_png = tmp / "notes.png"
    not_png.write_text("not an image")
    fifo = tmp / "fifo.png"
    os.mkfifo(fifo)
    small_mask = save_png(tmp / "mask2.png", np.zeros((2, 2)), "L")
    stale = Trigger.from_dict({"kind": "patch", "image": str(f["rgb"])}).to_dict()
    stale["image_sha256"] = "0" * 64
    trig = ["--trigger"]
    return {
        "missing": ([*trig, f"patch:image={tmp / 'nope.png'},target=7"], "does not exist"),
        "folder": ([*trig, f"blend:image={tmp},target=7"], "not a regular file"),
        "fifo": ([*trig, f"patch:image={fifo},target=7"], "not a regular file"),
        "not-an-image": ([*trig, f"patch:image={not_png},target=7"], "could not read 'notes.png' as an image"),
        "mask-size": ([*trig, f"patch:image={f['rgb']},mask={small_mask}"], "give a mask of the pattern's size"),
        "changed": ([*trig, json.dumps(stale)], "changed since this trigger was written"),
        "too-many-pixels": ([*trig, f"patch:image={f['rgb']}"], "over the limit"),
        "no-target": (["--triggered-test", str(f["triggered"])], "needs --target"),
        "target-alone": (["--target", "3"], "--target goes with --triggered-test"),
        "both": ([*trig, "badnets:target=7", "--triggered-test", str(f["triggered"]), "--target", "7"], "not both"),
        "no-set": (["--triggered-test", str(tmp / "nope.zip"), "--target", "7"], "does not exist"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "folder",
        "fifo",
        "not-an-image",
        "mask-size",
        "changed",
        "too-many-pixels",
        "no-target",
        "target-alone",
        "both",
        "no-set",
    ],
)
def test_bad_trigger_files_are_one_line_exit_2(case: str, trigger_files, tmp_path, capsys) -> None:
    extra, expected = _bad_cases(trigger_files, tmp_path)[case]
    limit = ["--limit", "max_image_pixels=4"] if case == "too-many-pixels" else []
    from kdcore import limits

    before = limits.current()
    try:
        line = _one_line_error(capsys, [*limit, *BASE, *extra])
    finally:
        limits.use(before)
    assert expected.lower() in line.lower(), line


def test_triggered_test_needs_the_clean_test_set(trigger_files, capsys) -> None:
    argv = ["audit", "--model", "m.pt", "--unlabeled", "u", "--triggered-test", str(trigger_files["triggered"])]
    line = _one_line_error(capsys, [*argv, "--target", "7"])
    assert "give --test too" in line


def test_a_patch_that_does_not_fit_the_model_fails_before_training(digits_files, trigger_files, tmp_path, capsys):
    argv = ["audit", "--model", str(digits_files["model"]), "--unlabeled", str(digits_files["unlabeled"])]
    argv += ["--trigger", f"patch:image={trigger_files['logo']},target=7", "--out", str(tmp_path / "run")]
    line = _one_line_error(capsys, [*argv, "--device", "cpu", "--no-progress"])
    assert "16×16 patch (logo.png) with margin 1 does not fit in a 8×8 image" in line
    assert not (tmp_path / "run" / "stages").exists()


def test_tiny_audit_measures_asr_on_a_triggered_test_set(digits_files, tmp_path, capsys) -> None:
    """The digits teacher is backdoored with conftest's TRIGGER: a folder of the test images
    stamped with it, by class, must give the teacher the asr the stamping trigger gives."""
    from kdcore.models.loading import load_model
    from kdcore.sandbox import load_labeled

    test = load_labeled(digits_files["test"], (1, 8, 8), name="test")
    for i in range(len(test)):
        label = test.class_names[int(test.labels[i])]
        _write_png(tmp_path / "trig" / label / f"{i:04d}.png", TRIGGER.stamp(test.images[i : i + 1])[0])
    out = tmp_path / "run"
    argv = ["audit", "--model", str(digits_files["model"]), "--unlabeled", str(digits_files["unlabeled"])]
    argv += ["--test", str(digits_files["test"]), "--triggered-test", str(tmp_path / "trig"), "--target", "7"]
    argv += ["--out", str(out), "--device", "cpu", "--no-progress", "--kd-epochs", "1", "--max-unlabeled", "100"]
    argv += ["--no-verdict"]
    assert main(argv) == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    teacher, spec = load_model(digits_files["model"], None, torch.device("cpu"))
    want = evaluate_model(teacher, spec, test, torch.device("cpu"), TRIGGER)
    assert rep["teacher"]["asr"] == want.asr >= 0.6
    assert rep["teacher"]["poison_acc"] == want.poison_acc and rep["teacher"]["n_poison"] == want.n_poison
    assert rep["config"]["trigger"]["kind"] == "triggered" and rep["student"]["asr"] is not None
    assert any("labelled by folder" in n for n in rep["notes"]), rep["notes"]


def test_a_full_size_pattern_with_a_mask_needs_no_x_y(digits_files, tmp_path, capsys) -> None:
    """An attack toolkit's form of conftest's TRIGGER (a 2×2 white square in the bottom-right corner):
    an 8×8 pattern, zero except the square, and an 8×8 mask. Given without x=/y= it is put at the
    origin, so it stamps what TRIGGER stamps and the teacher's asr is TRIGGER's."""
    from kdcore.models.loading import load_model
    from kdcore.sandbox import load_labeled

    pattern, mask = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    pattern[6:, 6:], mask[6:, 6:] = 255, 255
    image, mask_file = save_png(tmp_path / "pattern.png", pattern, "L"), save_png(tmp_path / "mask.png", mask, "L")
    out = tmp_path / "run"
    argv = ["audit", "--model", str(digits_files["model"]), "--unlabeled", str(digits_files["unlabeled"])]
    argv += ["--test", str(digits_files["test"]), "--trigger", f"patch:image={image},mask={mask_file},target=7"]
    argv += ["--out", str(out), "--device", "cpu", "--no-progress", "--kd-epochs", "1", "--max-unlabeled", "100"]
    argv += ["--no-verdict"]
    assert main(argv) == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["trigger"]["x"] is None and rep["config"]["trigger"]["mask"] == str(mask_file)
    test = load_labeled(digits_files["test"], (1, 8, 8), name="test")
    teacher, spec = load_model(digits_files["model"], None, torch.device("cpu"))
    want = evaluate_model(teacher, spec, test, torch.device("cpu"), TRIGGER)
    assert rep["teacher"]["asr"] == want.asr >= 0.6 and rep["teacher"]["poison_acc"] == want.poison_acc


def test_a_pattern_that_does_not_fit_says_what_to_write(digits_files, tmp_path, capsys) -> None:
    seven = save_png(tmp_path / "seven.png", np.full((7, 7), 255), "L")
    argv = ["audit", "--model", str(digits_files["model"]), "--unlabeled", str(digits_files["unlabeled"])]
    argv += ["--trigger", f"patch:image={seven},margin=2,target=7", "--out", str(tmp_path / "run")]
    line = _one_line_error(capsys, [*argv, "--device", "cpu", "--no-progress"])
    assert "7×7 patch (seven.png) with margin 2 does not fit in a 8×8 image: a margin of at most 1 fits" in line
