"""Pickled whole modules stay refused, and the refusal says which way in to use instead (issue 9, item 5):
ONNX, a torch.export archive, or the weights plus a named architecture (timm, plugin, --arch-file)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcore.cli import main
from kdcore.errors import ModelLoadError
from kdcore.models.loading import load_model
from kdcore.models.spec import ModelSpec
from kdcore.models.torchfile import WHOLE_MODEL_HINT

SPEC = ModelSpec("paper-cnn", 10, (1, 8, 8))
ROUTES = (
    "torch.onnx.export(",  # 1: ONNX, with the call
    "torch.export.save(torch.export.export(",  # 2: a torch.export archive, with the call
    "safetensors.torch.save_file(model.state_dict()",  # the weights, and then one of:
    "timm:resnet18",  # 3: a timm name
    "kdaudit.architectures",  # 4a: a plugin's entry-point group
    "--arch-file model.py:MyNet --trust-code",  # 4b: a class in a Python file
)


class Custom(nn.Module):
    """A class in no registry: what a user holds when they pickled their whole model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(72, 10)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_the_hint_names_every_route_with_its_command():
    for route in ROUTES:
        assert route in WHOLE_MODEL_HINT, route
    assert "\n" not in WHOLE_MODEL_HINT  # it ends a one-line CLI error


@pytest.mark.parametrize(
    "save",
    [
        lambda m, p: torch.save(m, p),
        lambda m, p: torch.jit.save(torch.jit.script(m), str(p)),
    ],
    ids=["torch.save", "torchscript"],
)
def test_whole_modules_are_refused_with_the_routes(tmp_path, save):
    path = tmp_path / "whole.pt"
    save(Custom(), path)
    with pytest.raises(ModelLoadError) as e:
        load_model(path, SPEC)
    for route in ROUTES:
        assert route in str(e.value), route


def test_cli_says_it_in_one_line_from_the_sandbox(digits_files, tmp_path, capsys):
    path = tmp_path / "whole.pt"
    torch.save(Custom(), path)
    args = ["audit", "--model", str(path), "--unlabeled", str(digits_files["unlabeled"]), "--out", str(tmp_path / "r")]
    assert main([*args, "--arch", "paper-cnn", "--num-classes", "10", "--input-shape", "1,8,8", "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "is a pickled object" in err[0] and "Custom" in err[0]
    for route in ROUTES:
        assert route in err[0], route
