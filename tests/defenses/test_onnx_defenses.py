"""`kdcore defend METHOD --model m.onnx ...` for every registered defense on an ONNX export of the
backdoored digits teacher: each runs to a report, or refuses with one line on stderr (exit 2).
Through the CLI's own `main` (in this process, so the sandbox's fork server is started once)."""

from __future__ import annotations

import json

import pytest
import torch

from kdcore.cli import main
from kdcore.defenses import DEFENSES, Repairer
from kdcore.models.loading import load_model
from tests.models.test_onnx import export

# One epoch and small searches: this checks that each method runs on a converted graph, not how well.
FAST = {
    "activation-clustering": {},
    "bcu": {"epochs": 1},
    "fine-pruning": {"finetune": {"epochs": 1}},
    "kd": {"distill": {"epochs": 1, "batch_size": 64}, "finetune": {"epochs": 1, "val_fraction": 0.1, "patience": 0}},
    "linf-pruning": {"steps": 3},
    "nad": {"teacher_epochs": 1, "epochs": 1},
    "neural-cleanse": {"steps": 10, "n_images": 32},
}


# Methods that cannot apply to this model, with what their refusal says (none: a converted paper
# CNN has the conv and dense layers every method looks for).
REFUSED: dict[str, str] = {}


@pytest.fixture(scope="module")
def onnx_teacher(digits_files, tmp_path_factory):
    """The backdoored digits teacher exported with PyTorch's default exporter, its spec (for the
    normalisation) in the ONNX metadata."""
    teacher, spec = load_model(digits_files["model"])
    path = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    return export(teacher, spec.input_shape, path, dynamo=True, metadata={"kdcore_spec": spec.to_json()})


def test_every_registered_method_has_fast_settings():
    assert set(FAST) == set(DEFENSES)


@pytest.mark.parametrize("method", sorted(DEFENSES))
def test_every_method_runs_on_an_onnx_model_or_says_why_not(method, onnx_teacher, digits_files, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["defend", method, "--model", str(onnx_teacher), "--out", str(out), "--device", "cpu", "--no-progress"]
    args += ["--unlabeled", str(digits_files["unlabeled"]), "--train", str(digits_files["train"])]
    args += ["--test", str(digits_files["test"]), "--trigger", "badnets:target=7,size=2,margin=0"]
    args += ["--params", json.dumps(FAST[method])]
    if DEFENSES[method].needs_labels:
        args += ["--clean-labeled", str(digits_files["clean_labeled"])]
    torch.manual_seed(0)
    rc = main(args)
    err = capsys.readouterr().err.strip()
    if method in REFUSED:  # a refusal: exit 2 and one line that says why
        assert rc == 2 and err.startswith("kdcore: error:") and "\n" not in err and "Traceback" not in err
        assert REFUSED[method] in err
        return
    assert rc == 0, err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == method
    assert report["suspect"]["asr"] > 0.8  # the converted teacher carries the backdoor
    assert report["suspect"]["clean_acc"] > 0.8
    if issubclass(DEFENSES[method], Repairer):  # the repaired model saved with its graph beside it
        assert (out / "models" / "repaired.source.onnx").read_bytes() == onnx_teacher.read_bytes()
        model, spec = load_model(out / "models" / "repaired.safetensors")
        assert spec.arch == "onnx" and model(torch.zeros(1, *spec.input_shape)).shape == (1, 10)


def test_an_unconvertible_onnx_model_is_one_line_on_stderr(digits_files, tmp_path, capsys):
    from onnx import helper

    from tests.models.test_onnx import crafted

    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "b"], ["g"], transB=1),
        helper.make_node("Hardmax", ["g"], ["y"]),
    ]
    model = crafted(tmp_path / "hardmax.onnx", nodes=nodes)
    args = ["defend", "kd", "--model", str(model), "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress"]
    args += ["--unlabeled", str(digits_files["unlabeled"]), "--test", str(digits_files["test"])]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdcore: error:") and "\n" not in err and "Hardmax" in err
