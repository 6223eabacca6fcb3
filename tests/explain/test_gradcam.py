"""Grad-CAM (seed 004, §3): shapes, model state left as found, and an oracle on a hand-checkable model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdcore.errors import ConfigError, InputError
from kdcore.explain import gradcam, overlay
from kdcore.models.layers import choose_layer
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.train import TrainConfig, fit, predict_logits, seeded_model

CPU = torch.device("cpu")

# The conv each registry architecture runs last, written out by hand per architecture.
LAST_CONV = {
    "paper-cnn": ((1, 8, 8), lambda m: m.features[2]),
    "paper-vgg11": ((3, 32, 32), lambda m: m.features[-3]),  # … conv, ReLU, MaxPool
    "resnet18-small": ((3, 32, 32), lambda m: m.layer4[1].conv2),
    "tv:resnet18": ((3, 64, 64), lambda m: m.layer4[1].conv2),
}


@pytest.fixture(scope="module")
def trained(digits, digits_spec):
    """paper-cnn fitted for 3 epochs on 600 digits (~95% train accuracy): CAMs that mean something."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test one-thread fixture
    model = seeded_model(lambda: build_model(digits_spec), 0)
    model, _ = fit(model, digits_spec, digits.subset(torch.arange(600)), TrainConfig(epochs=3, batch_size=50), CPU)
    torch.set_num_threads(old)
    return model.eval()


@pytest.fixture
def images(digits):
    return digits.images[600:606]  # (6, 1, 8, 8) uint8, not trained on


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", sorted(LAST_CONV))
def test_last_conv_layer_is_the_last_conv_to_run(arch):
    shape, expected = LAST_CONV[arch]
    spec = ModelSpec(arch, 10, shape)
    model = build_model(spec).eval()
    ran: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda m, i, o: ran.append(m)) for m in model.modules() if isinstance(m, nn.Conv2d)
    ]
    with torch.inference_mode():
        model(torch.zeros((1, *shape)))
    for h in handles:
        h.remove()
    name, layer = choose_layer(model, spec, "last_conv")
    assert isinstance(layer, nn.Conv2d) and dict(model.named_modules())[name] is layer
    assert layer is expected(model)
    assert layer is ran[-1]


def test_last_conv_layer_without_conv_is_a_config_error():
    with pytest.raises(ConfigError, match=r"no nn\.Conv2d"):
        choose_layer(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ModelSpec("x", 10, (1, 8, 8)), "last_conv")


@pytest.mark.parametrize("training", [True, False])
def test_gradcam_shape_range_and_model_left_as_found(digits_spec, images, training):
    model = seeded_model(lambda: build_model(digits_spec), 1).train(training)
    model.classifier[1].weight.requires_grad_(False)  # a caller's partly frozen model
    sentinel = torch.full_like(model.classifier[3].weight, 3.0)
    model.classifier[3].weight.grad = sentinel  # a caller's pending gradient
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]

    cams = gradcam(model, digits_spec, images, None)

    assert cams.shape == (6, 8, 8) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0 and cams.max() > 0.5
    assert _hooks_left(model) == 0
    assert all(m.training is training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.classifier[3].weight.grad is sentinel
    assert all(p.grad is None for n, p in model.named_parameters() if n != "classifier.3.weight")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gradcam_inside_inference_mode(trained, digits_spec, images):
    expected = gradcam(trained, digits_spec, images, 3)
    with torch.inference_mode():
        inference_images = images.clone()  # an inference tensor, as the dashboard's loaders make
        cams = gradcam(trained, digits_spec, inference_images, 3)
    np.testing.assert_allclose(cams, expected, atol=1e-6)
    assert _hooks_left(trained) == 0


def test_gradcam_none_targets_the_predicted_class(trained, digits_spec, images):
    predicted = predict_logits(trained, digits_spec, images, CPU).argmax(1).tolist()
    np.testing.assert_allclose(
        gradcam(trained, digits_spec, images, None), gradcam(trained, digits_spec, images, predicted), atol=1e-6
    )
    mixed = [None, *predicted[1:]]
    np.testing.assert_allclose(
        gradcam(trained, digits_spec, images, mixed), gradcam(trained, digits_spec, images, predicted), atol=1e-6
    )


def test_gradcam_differs_between_classes(trained, digits_spec, images):
    predicted = predict_logits(trained, digits_spec, images, CPU).argmax(1)
    other = ((predicted + 5) % 10).tolist()
    cams_true = gradcam(trained, digits_spec, images, predicted.tolist())
    cams_other = gradcam(trained, digits_spec, images, other)
    per_image = np.abs(cams_true - cams_other).mean(axis=(1, 2))  # (N,)
    assert (per_image > 0.05).all()


def test_gradcam_batching_does_not_change_maps(trained, digits_spec, images):
    np.testing.assert_allclose(
        gradcam(trained, digits_spec, images, 4, batch_size=4), gradcam(trained, digits_spec, images, 4), atol=1e-6
    )


def test_gradcam_rejects_bad_targets_and_images(trained, digits_spec, images):
    with pytest.raises(ConfigError, match="does not exist"):
        gradcam(trained, digits_spec, images, 10)  # pytorch-grad-cam would swallow this IndexError
    with pytest.raises(InputError, match="2 target classes given for 6 images"):
        gradcam(trained, digits_spec, images, [1, 2])
    with pytest.raises(InputError, match="uint8"):
        gradcam(trained, digits_spec, images.float(), None)
    with pytest.raises(ConfigError, match="not part of the model"):
        gradcam(trained, digits_spec, images, None, layer=nn.Conv2d(1, 2, 3))
    assert gradcam(trained, digits_spec, images[:0], None).shape == (0, 8, 8)
    assert _hooks_left(trained) == 0


def test_gradcam_releases_hooks_when_the_model_raises(digits_spec):
    model = seeded_model(lambda: build_model(digits_spec), 1).train()
    wrong = ModelSpec("paper-cnn", 10, (1, 10, 10))  # built for 8×8: the Linear fails after the hooked conv
    with pytest.raises(RuntimeError) as excinfo:
        gradcam(model, wrong, torch.zeros((2, 1, 10, 10), dtype=torch.uint8), None)
    assert excinfo.traceback  # the traceback keeps gradcam's frame (and its GradCAM) alive: no __del__ yet
    assert _hooks_left(model) == 0
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("relu", ["inplace", "relu", "none"])
def test_gradcam_oracle(relu):
    """conv (padding 1) → [ReLU] → global average pool → linear, so h×w = H×W and by hand:
    ∂y_c/∂A_k(i,j) = W[c,k]/(h·w)·[A_k(i,j) > 0 if ReLU], α_k = mean_ij, cam = ReLU(Σ_k α_k A_k),
    min-max scaled. A is the conv output; an in-place ReLU must not leak into it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    act = {"inplace": [nn.ReLU(inplace=True)], "relu": [nn.ReLU()], "none": []}[relu]
    linear = nn.Linear(4, 3)
    model = nn.Sequential(conv, *act, nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
    spec = ModelSpec("hand-built", 3, (1, 6, 6), (0.5,), (0.25,))
    images = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    targets = [0, 1, 2, 1, 0]

    with torch.no_grad():
        a = conv(spec.normalize(images))  # (N, 4, 6, 6), before any ReLU
    w = linear.weight.detach()[targets]  # (N, 4): row c of the linear layer per image
    mask = (a > 0).float() if act else torch.ones_like(a)
    grads = w[:, :, None, None] / 36.0 * mask  # (N, 4, 6, 6) = ∂y_c/∂A
    alpha = grads.mean(dim=(2, 3))  # (N, 4)
    cam = torch.relu((alpha[:, :, None, None] * a).sum(1))  # (N, 6, 6)
    lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    expected = ((cam - lo) / (hi - lo).clamp_min(1e-12)).numpy()

    got = gradcam(model, spec, images, targets)

    assert (hi > lo).all(), "degenerate oracle: pick another seed"
    np.testing.assert_allclose(got, expected, atol=1e-5)
    if relu == "none":  # the textbook case: α_k = W[c, k] / (h·w)
        np.testing.assert_allclose(alpha.numpy(), (w / 36.0).numpy(), rtol=1e-6)


def test_overlay_blends_jet_over_the_image(digits):
    image = digits.images[0]  # (1, 8, 8)
    cam = np.zeros((8, 8), dtype=np.float32)
    cam[:, 4:] = 1.0  # right half hot
    out = overlay(image, cam)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    blank = overlay(torch.zeros((3, 8, 8), dtype=torch.uint8), cam)
    assert (blank[:, 4:, 0] > blank[:, 4:, 2]).all()  # hot → red
    assert (blank[:, :4, 2] > blank[:, :4, 0]).all()  # cold → blue
    with pytest.raises(InputError, match="must match"):
        overlay(image, np.zeros((4, 4)))
    with pytest.raises(InputError, match="uint8"):
        overlay(image.float(), cam)
