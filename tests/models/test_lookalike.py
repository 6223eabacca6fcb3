"""The key-mismatch error: summarised, with the architecture the file looks like and the full lists
as `details`, which survive the sandbox (issue 14)."""

from __future__ import annotations

import torch
import torchvision

from kdcore import sandbox
from kdcore.errors import ModelLoadError, checked_details
from kdcore.models.lookalike import _shapes as _arch_shapes
from kdcore.models.lookalike import looks_like
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec

SPEC = ModelSpec("paper-cnn", 10, (1, 28, 28))


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_looks_like_names_the_architecture_whose_keys_match() -> None:
    assert looks_like(_shapes(torchvision.models.resnet18(num_classes=43))) == "tv:resnet18"
    assert looks_like(_shapes(torchvision.models.resnet50())) == "tv:resnet50"
    assert looks_like(_shapes(build_model(ModelSpec("paper-vgg11", 10, (3, 32, 32))))) == "paper-vgg11"
    assert looks_like({"a.weight": (3,), "b.bias": (1,)}) == ""  # nothing close
    assert looks_like(_shapes(build_model(SPEC)), exclude="paper-cnn") == ""


def test_looking_does_not_draw_from_the_global_generator() -> None:
    got = _shapes(torchvision.models.resnet18())
    _arch_shapes.cache_clear()  # build the candidates again, on the meta device
    torch.manual_seed(0)
    expected = torch.randn(3)
    torch.manual_seed(0)
    assert looks_like(got) == "tv:resnet18"
    assert torch.equal(torch.randn(3), expected)


def test_the_sandboxed_check_summarises_and_keeps_the_full_lists(tmp_path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    try:
        sandbox.check_model(path, SPEC)
    except ModelLoadError as e:
        msg, details = str(e), e.details
    else:
        raise AssertionError("a ResNet-18 loaded as paper-cnn")
    assert "the file has 41 layer(s) the architecture does not know, e.g. conv1, bn1, layer1.0.conv1" in msg
    assert "it looks like tv:resnet18: try --arch tv:resnet18" in msg
    assert details["suggestion"] == "tv:resnet18" and details["arch"] == "paper-cnn"
    assert len(details["unexpected"]) == 122 and "layer4.1.bn2.running_var" in details["unexpected"]
    assert details["missing_layers"] == ["features.0", "features.2", "classifier.1", "classifier.3"]


def test_checked_details_keeps_plain_values_only() -> None:
    d = {"a": "x", "b": 3, "c": ["y"], "d": [1], "e": {"f": 1}, 5: "k"}
    assert checked_details(d) == {"a": "x", "b": 3, "c": ["y"]}
    assert checked_details(["no"]) == {}
