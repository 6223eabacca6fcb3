"""What an audit or defend run builds its model from: flags win over files beside the model (issue 9,
item 8), the user's layer choice (`--layers`) lands in the spec, and methods that need a conv refuse a
model without one in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcore.cli import main
from kdcore.config import from_dict
from kdcore.defenses import DEFENSES, DefenseInputs
from kdcore.errors import ConfigError, ModelLoadError
from kdcore.explain.gradcam import gradcam
from kdcore.models.layers import NO_CONV
from kdcore.models.loading import read_state_dict
from kdcore.models.spec import ModelSpec
from kdcore.runs.configs import AuditConfig
from kdcore.runs.defend import DefendConfig, run_defend
from tests.runs.test_defend import FAST

NEEDS_CONV = ("fine-pruning", "linf-pruning", "nad")


@pytest.fixture(scope="module")
def state_pt(digits_files, tmp_path_factory) -> Path:
    """The digits teacher as a bare state_dict .pt (no spec), in a folder of its own."""
    path = tmp_path_factory.mktemp("pt") / "teacher.pt"
    torch.save(read_state_dict(digits_files["model"]), path)
    return path


def _cfg(files: dict, model: Path, **kw) -> AuditConfig:
    return from_dict(AuditConfig, {"model": str(model), "unlabeled": str(files["unlabeled"]), **kw})


FLAGS = {"arch": "paper-cnn", "num_classes": 10, "input_shape": (1, 8, 8)}


# --- item 8: flags win ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sidecar",
    [
        {"experiment": "run 12", "lr": 0.1},  # any JSON of the same name
        {"arch": "paper-cnn", "num_classes": 1},  # looks like a kdcore spec, but is not a valid one
        "[1, 2",  # not even JSON
    ],
    ids=["unrelated", "invalid-spec", "not-json"],
)
def test_a_json_beside_the_model_does_not_break_an_audit_with_flags(digits_files, state_pt, sidecar, capsys):
    side = state_pt.with_suffix(".json")
    side.write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    try:
        assert _cfg(digits_files, state_pt, **FLAGS).model_spec() == ModelSpec("paper-cnn", 10, (1, 8, 8))
        # without --input-shape the file is looked at (for a stored shape), and what is there is not ours
        no_shape = _cfg(digits_files, state_pt, arch="paper-cnn", num_classes=10).model_spec()
        assert no_shape == ModelSpec("paper-cnn", 10, (1, 28, 28))
        out = state_pt.parent / "run"
        args = ["audit", "--model", str(state_pt), "--unlabeled", str(digits_files["unlabeled"]), "--out", str(out)]
        args += ["--arch", "paper-cnn", "--num-classes", "10", "--input-shape", "1,8,8", "--kd-epochs", "1"]
        assert main([*args, "--max-unlabeled", "100", "--device", "cpu", "--no-progress"]) == 0, capsys.readouterr()
        assert json.loads((out / "report.json").read_text())["model"]["spec"]["arch"] == "paper-cnn"
    finally:
        side.unlink()


def test_a_kdcore_spec_beside_the_model_is_read_without_flags(digits_files, digits_spec, state_pt):
    side = state_pt.with_suffix(".json")
    side.write_text(digits_spec.to_json())
    try:
        assert _cfg(digits_files, state_pt).model_spec() == digits_spec
        side.write_text(json.dumps({"arch": "paper-cnn", "num_classes": 1}))
        with pytest.raises(ModelLoadError, match=r"teacher.json is not valid .*give --arch and --num-classes"):
            _cfg(digits_files, state_pt).model_spec()
        side.write_text(json.dumps({"experiment": "run 12"}))
        with pytest.raises(ConfigError, match=r"teacher.pt carries no spec; give --arch and --num-classes"):
            _cfg(digits_files, state_pt).model_spec()
    finally:
        side.unlink()


def test_a_stored_input_shape_is_used_only_for_the_same_architecture(digits_files):
    same = _cfg(digits_files, digits_files["model"], arch="paper-cnn", num_classes=10).model_spec()
    assert same.input_shape == (1, 8, 8)  # from the file's spec
    other = _cfg(digits_files, digits_files["model"], arch="resnet18-small", num_classes=10).model_spec()
    assert other.input_shape == (3, 32, 32)  # the architecture's default, not the paper-cnn's


# --- the user's layer choice ---------------------------------------------------------------------


def test_layers_flag_lands_in_the_spec(digits_files, digits_spec):
    cfg = _cfg(digits_files, digits_files["model"], layers=("last_conv=features.0", " penultimate = classifier.1"))
    assert cfg.model_spec() == digits_spec.replace(layers={"last_conv": "features.0", "penultimate": "classifier.1"})
    for bad in ("first_conv=features.0", "last_conv", "last_conv="):
        with pytest.raises(ConfigError, match=r"--layers takes ROLE=NAME pairs with ROLE one of last_conv, penult"):
            _cfg(digits_files, digits_files["model"], layers=(bad,))


def _defend(files: dict, method: str, **audit) -> DefendConfig:
    d = {"model": str(files["model"]), "unlabeled": str(files["unlabeled"]), "test": str(files["test"]), **audit}
    extra = {"clean_labeled": str(files["clean_labeled"])} if DEFENSES[method].needs_labels else {}
    return from_dict(DefendConfig, {"method": method, "params": FAST[method], "audit": d, "device": "cpu", **extra})


@pytest.mark.parametrize("method", ["fine-pruning", "linf-pruning"])
def test_defend_prunes_the_chosen_conv(digits_files, tmp_path, method):
    report = run_defend(_defend(digits_files, method, layers=("last_conv=features.0",)), tmp_path)
    assert report["evidence"]["layer"] == "features.0"  # not the default, features.2


def test_a_wrong_layer_name_is_one_line_listing_the_candidates(digits_files, tmp_path, capsys):
    f = digits_files
    args = ["defend", "linf-pruning", "--model", str(f["model"]), "--unlabeled", str(f["unlabeled"])]
    args += ["--layers", "last_conv=features.9", "--device", "cpu", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "kdcore: error: PaperCNN has no module named 'features.9'; pick one of its nn.Conv2d layers: "
        "['features.0', 'features.2']"
    ]


# --- methods that need a conv, on a model without one --------------------------------------------


class NoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).relu())


@pytest.mark.parametrize("method", NEEDS_CONV)
def test_methods_that_need_a_conv_refuse_a_model_without_one(method, digits_backdoor, digits_spec):
    inputs: DefenseInputs = digits_backdoor(model=NoConv().eval())
    with pytest.raises(ConfigError, match=r"NoConv has no nn.Conv2d layer") as e:
        DEFENSES[method].from_params(FAST[method]).run(inputs)
    assert NO_CONV in str(e.value) and "Neural Cleanse" in str(e.value)


def test_gradcam_refuses_a_model_without_a_conv(digits, digits_spec):
    with pytest.raises(ConfigError, match=r"NoConv has no nn.Conv2d layer: Grad-CAM"):
        gradcam(NoConv(), digits_spec, digits.images[:2], None)
