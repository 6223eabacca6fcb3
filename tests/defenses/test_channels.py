"""Channel masking in the weights (shared by ℓ∞ pruning and fine-pruning): the consuming BatchNorm is
found by tracing, masked channels are exactly 0 after conv (+ BN) + ReLU, the rest is untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcore.defenses.channels import channel_layer, freeze_channels, masked_channels, zero_channels
from kdcore.errors import ConfigError
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.train import seeded_model

RESNET_SPEC = ModelSpec("resnet18-small", 10, (3, 16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _resnet() -> nn.Module:
    """resnet18-small with random BN statistics and affine, so BN is not the identity."""
    model = seeded_model(lambda: build_model(RESNET_SPEC), 0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
    return model.eval()


def _channel_output(model, spec, layer, x_u8, train: bool = False) -> torch.Tensor:
    """relu(output of the layer's activation module), captured by a hand-made hook."""
    captured = []
    handle = layer.activation_layer.register_forward_hook(lambda m, i, o: captured.append(torch.relu(o.detach())))
    model.train(train)
    with torch.no_grad():
        model(spec.normalize(x_u8))
    handle.remove()
    model.eval()
    return captured[0]  # (B, C, h, w)


def test_paper_cnn_last_conv_has_no_norm(digits_spec):
    layer = channel_layer(build_model(digits_spec), digits_spec)
    assert (layer.name, layer.norm, layer.channels) == ("features.2", None, 32)
    assert layer.activation_layer is layer.conv


@pytest.mark.parametrize(
    ("name", "conv", "norm"),
    [
        (None, "layer4.1.conv2", "layer4.1.bn2"),
        ("conv1", "conv1", "bn1"),
        ("layer3.0.conv1", "layer3.0.conv1", "layer3.0.bn1"),
        ("layer2.0.shortcut.0", "layer2.0.shortcut.0", "layer2.0.shortcut.1"),
    ],
)
def test_resnet_finds_the_batchnorm_that_consumes_the_conv(name, conv, norm):
    model = build_model(RESNET_SPEC)
    layer = channel_layer(model, RESNET_SPEC, name)
    modules = dict(model.named_modules())
    assert (layer.name, layer.norm_name) == (conv, norm)
    assert layer.conv is modules[conv] and layer.norm is modules[norm]


@pytest.mark.parametrize("arch", ["paper-cnn", "resnet18-small"])
def test_masked_channels_are_exactly_zero_and_others_unchanged(arch, digits_spec):
    if arch == "paper-cnn":
        spec, model = digits_spec, seeded_model(lambda: build_model(digits_spec), 0).eval()
    else:
        spec, model = RESNET_SPEC, _resnet()
    x = torch.randint(0, 256, (6, *spec.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    layer = channel_layer(model, spec)
    before = _channel_output(model, spec, layer, x)
    assert (before.amax(dim=(0, 2, 3)) > 0).float().mean() > 0.5  # the test is not vacuous
    masked = [0, 3, layer.channels - 1]
    zero_channels(layer, masked)
    after = _channel_output(model, spec, layer, x)
    keep = [c for c in range(layer.channels) if c not in masked]
    assert torch.equal(after[:, masked], torch.zeros_like(after[:, masked]))
    assert torch.equal(after[:, keep], before[:, keep])
    assert masked_channels(layer) == masked
    if layer.norm is not None:  # in train mode BN uses batch statistics; the channel is still 0
        train_out = _channel_output(model, spec, layer, x, train=True)
        assert torch.equal(train_out[:, masked], torch.zeros_like(train_out[:, masked]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_frozen_channels_stay_zero_while_training_and_hooks_come_off(optimizer, digits_spec):
    # a tiny conv-BN net: the freeze logic is the same as in a ResNet, and a thousand times cheaper
    model = seeded_model(
        lambda: nn.Sequential(
            nn.Conv2d(1, 8, 3),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 10),
        ),
        0,
    )
    layer = channel_layer(model, digits_spec)
    assert (layer.name, layer.norm_name) == ("3", "4")
    masked = [1, 5, 7]
    zero_channels(layer, masked)
    bias_start = layer.norm.bias.detach().clone()
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.01)
    handles = freeze_channels(layer, masked)
    g = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(5):
        x = torch.randn(16, 1, 8, 8, generator=g)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (16,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for h in handles:
        h.remove()
    assert masked_channels(layer) == masked
    keep = [c for c in range(layer.channels) if c not in masked]
    assert not torch.equal(layer.norm.bias[keep], bias_start[keep])  # the rest did train
    with torch.no_grad():
        layer.norm.bias[masked] = 1.0  # switch the channels back on: ReLU passes gradient again
    model.zero_grad()
    model(torch.randn(16, 1, 8, 8, generator=g)).logsumexp(1).sum().backward()
    assert (layer.norm.bias.grad[masked] != 0).all()  # no hook left behind


def test_unmaskable_layers_raise(digits_spec):
    spec = ModelSpec("paper-cnn", 10, (1, 8, 8), (0.3,), (0.4,))
    group = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(ConfigError, match="GroupNorm"):
        channel_layer(group, spec)
    plain_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(ConfigError, match="affine"):
        channel_layer(plain_bn, spec)
    model = build_model(digits_spec)
    with pytest.raises(ConfigError, match=r"nn\.Conv2d"):
        channel_layer(model, digits_spec, "features.1")
    with pytest.raises(ConfigError, match="no module named"):
        channel_layer(model, digits_spec, "features.9")
    with pytest.raises(ConfigError, match=r"\[0, 32\)"):
        zero_channels(channel_layer(model, digits_spec), [32])
