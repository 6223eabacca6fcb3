"""kdcore.hooks (capture, trace, restored modes) and kdcore.models.layers (choose_layer), on tiny CPU models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kdcore.errors import ConfigError
from kdcore.explain import activations, channel_linf
from kdcore.hooks import Capture, capture, restored_modes, trace
from kdcore.models.layers import choose_layer, require_conv
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.train import seeded_model

SPEC = ModelSpec("tiny", 10, (1, 8, 8), (0.3,), (0.4,))


class OutOfOrder(nn.Module):
    """Layers registered in the opposite order to the one they run in: `late` is defined first."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4 * 4 * 4, 10)  # runs last
        self.late = nn.Conv2d(4, 4, 3)  # runs second
        self.late_bn = nn.BatchNorm2d(4)
        self.early = nn.Conv2d(1, 4, 3)  # runs first
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.early(x))  # (B, 4, 6, 6)
        x = F.relu(self.late_bn(self.late(x)))  # (B, 4, 4, 4)
        return self.head(self.dropout(x.flatten(1)))


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 6, 3), nn.ReLU(inplace=True), nn.Flatten()
    ).append(nn.Linear(6 * 4 * 4, 10))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _mixed_modes(model: nn.Module) -> list[bool]:
    model.train()
    list(model.modules())[2].eval()  # one module in eval inside a training model
    return [m.training for m in model.modules()]


def test_capture_removes_hooks_and_restores_modes_on_exit_and_on_exception():
    model = seeded_model(_cnn, 0)
    modes = _mixed_modes(model)
    x = torch.randn(3, 1, 8, 8)
    with capture(model, ["0", "2"]) as cap:
        assert not any(m.training for m in model.modules())  # eval inside the block
        assert _hooks(model) == 2
        model(x)
    assert _hooks(model) == 0 and [m.training for m in model.modules()] == modes
    assert set(cap) == {"0", "2"} and cap.calls["0"] == 1

    with pytest.raises(RuntimeError, match="boom"), capture(model, ["2"]):
        raise RuntimeError("boom")
    assert _hooks(model) == 0 and [m.training for m in model.modules()] == modes

    with pytest.raises(RuntimeError), capture(model, ["2"]):
        model(torch.randn(3, 2, 8, 8))  # the model itself raises: wrong channel count
    assert _hooks(model) == 0 and [m.training for m in model.modules()] == modes

    with capture(model, ["2"], eval_mode=False):
        assert [m.training for m in model.modules()] == modes  # left alone when asked to
    with pytest.raises(RuntimeError), restored_modes(model):
        raise RuntimeError
    assert [m.training for m in model.modules()] == modes


def test_captured_output_equals_the_sub_network_and_survives_inplace_relu():
    model = seeded_model(_cnn, 0).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        expected = model[2](torch.relu(model[0](x)))  # (5, 6, 4, 4): conv output, before its ReLU
        with capture(model, ["2"]) as cap:
            model(x)
        with capture(model, ["2"], clone=False) as alias:
            model(x)
        with capture(model, {"head": model[5]}, what="input") as inp:
            model(x)
    assert (expected < 0).any()  # the test is not vacuous: the in-place ReLU would change it
    torch.testing.assert_close(cap["2"], expected, rtol=0, atol=0)
    assert (alias["2"] >= 0).all()  # without the clone the in-place ReLU rewrote what was captured
    torch.testing.assert_close(inp["head"], torch.relu(expected).flatten(1), rtol=0, atol=0)


def test_capture_keeps_gradients_and_counts_calls():
    model = seeded_model(_cnn, 0)
    cap = Capture(model, ["2"])
    try:
        model(torch.randn(2, 1, 8, 8)).sum()
        cap["2"].square().sum().backward()  # NAD backpropagates through a captured activation
        assert model[2].weight.grad is not None and model[2].weight.grad.abs().sum() > 0
        model(torch.randn(2, 1, 8, 8))
        with pytest.raises(ConfigError, match="ran 2 times"):
            cap.one("2")
        cap.clear()
        with pytest.raises(ConfigError, match="ran 0 times"):
            cap.one("2")
    finally:
        cap.remove()
    assert _hooks(model) == 0
    with pytest.raises(ConfigError, match="no module named"):
        Capture(model, ["9"])


def test_trace_lists_calls_in_execution_order_and_leaves_the_model_alone():
    model = OutOfOrder().train()
    calls = trace(model, SPEC.input_shape)
    assert [c.name for c in calls] == ["early", "late", "late_bn", "dropout", "head"]
    assert calls[1].shape == (2, 4, 4, 4)
    assert calls[2].consumes(calls[1].output) and not calls[3].consumes(calls[1].output)
    assert model.training and _hooks(model) == 0


def test_choose_layer_follows_execution_not_registration_order():
    model = OutOfOrder()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs[-1] == "early"  # registration order would pick the first conv to run
    assert choose_layer(model, SPEC, "last_conv") == ("late", model.late)
    assert choose_layer(model, SPEC, "conv_activation") == ("late_bn", model.late_bn)
    assert choose_layer(model, SPEC, "penultimate") == ("head", model.head)
    assert choose_layer(model, SPEC, "last_conv", "early") == ("early", model.early)
    assert choose_layer(model, SPEC, "conv_activation", "early") == ("early", model.early)  # no BN after it


def test_choose_layer_name_override_errors_list_the_candidates():
    model = OutOfOrder()
    with pytest.raises(ConfigError, match=r"no module named 'nope'.*nn\.Conv2d layers: \['early', 'late'\]"):
        choose_layer(model, SPEC, "last_conv", "nope")
    with pytest.raises(ConfigError, match=r"'late_bn' is a BatchNorm2d, not an nn\.Conv2d.*\['early', 'late'\]"):
        choose_layer(model, SPEC, "last_conv", "late_bn")
    with pytest.raises(ConfigError, match=r"'late' is a Conv2d, not an nn\.Linear.*\['head'\]"):
        choose_layer(model, SPEC, "penultimate", "late")
    with pytest.raises(ConfigError, match="role must be one of"):
        choose_layer(model, SPEC, "first_conv")  # type: ignore[arg-type]


def test_a_model_without_conv_says_what_can_and_cannot_run():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    for role in ("last_conv", "conv_activation"):
        with pytest.raises(ConfigError) as err:
            choose_layer(mlp, SPEC, role)
        msg = str(err.value)
        assert "no nn.Conv2d layer" in msg
        assert "Grad-CAM" in msg and "ℓ∞ pruning" in msg and "fine-pruning" in msg  # cannot run
        assert "Neural Cleanse" in msg and "BCU" in msg and "activation clustering still apply" in msg  # can
    with pytest.raises(ConfigError, match=r"no nn\.Conv2d layer"):
        require_conv(mlp)
    assert choose_layer(mlp, SPEC, "penultimate") == ("3", mlp[3])  # activation clustering does run
    with pytest.raises(ConfigError, match=r"no nn\.Linear"):
        choose_layer(nn.Sequential(nn.Conv2d(1, 2, 3)), SPEC, "penultimate")


def test_linf_of_captured_activations_is_amax():
    model = seeded_model(OutOfOrder, 0).eval()
    with torch.no_grad():  # a BN that is not the identity
        model.late_bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        model.late_bn.bias.copy_(torch.tensor([0.1, -0.3, 0.0, 0.2]))
    x = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    _, bn = choose_layer(model, SPEC, "conv_activation")
    with torch.inference_mode():
        manual = torch.relu(model.late_bn(model.late(torch.relu(model.early(SPEC.normalize(x))))))  # (7, 4, 4, 4)
    got = channel_linf(model, SPEC, x, bn, relu=True)  # (7, 4); one batch, so the same float ops as `manual`
    torch.testing.assert_close(torch.from_numpy(got), manual.amax(dim=(2, 3)), rtol=0, atol=0)
    acts = activations(model, SPEC, x, bn, relu=True)
    torch.testing.assert_close(acts, manual, rtol=0, atol=0)
    torch.testing.assert_close(
        acts.flatten(1).abs().amax(1), torch.linalg.vector_norm(acts.flatten(1), float("inf"), 1)
    )


def test_explain_and_linf_pruning_measure_the_same_activation_on_resnet():
    """resnet18-small: Explain's activation (conv_activation, relu) is what ℓ∞ pruning scores."""
    from kdcore.defenses.channels import channel_layer

    spec = ModelSpec("resnet18-small", 10, (3, 16, 16))
    model = seeded_model(lambda: build_model(spec), 0).eval()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    layer = channel_layer(model, spec)
    name, explain_layer = choose_layer(model, spec, "conv_activation")
    assert name == layer.norm_name == "layer4.1.bn2" and explain_layer is layer.activation_layer
    pruning = channel_linf(model, spec, x, layer.activation_layer).clip(min=0)  # linf_pruning.channel_scores
    explain = activations(model, spec, x, explain_layer, relu=True).amax(dim=(2, 3))
    torch.testing.assert_close(explain, torch.from_numpy(pruning), rtol=0, atol=0)
