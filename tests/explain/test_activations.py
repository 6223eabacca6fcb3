"""Last-conv activations and their ℓp norms (seed 004, §4) against hand-written hooks and norms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kdcore.errors import ConfigError, InputError
from kdcore.explain import NormStats, activation_norms, activations, channel_linf, compare_norms
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.train import seeded_model
from kdcore.triggers import BadNets

TRIGGER = BadNets(target=7, size=2, margin=0)


@pytest.fixture
def model(digits_spec):
    return seeded_model(lambda: build_model(digits_spec), 0).eval()


@pytest.fixture
def images(digits):
    return digits.images[:10]  # (10, 1, 8, 8) uint8


def _manual_activations(model, spec, images) -> torch.Tensor:
    """The last conv's output by a hand-made hook: (N, 32, 4, 4) for paper-cnn on 8×8."""
    captured = []
    handle = model.features[2].register_forward_hook(lambda m, i, o: captured.append(o.clone()))
    with torch.inference_mode():
        model(spec.normalize(images))
    handle.remove()
    return captured[0]


def test_activations_are_the_last_conv_output(model, digits_spec, images):
    expected = _manual_activations(model, digits_spec, images)
    acts = activations(model, digits_spec, images)
    assert acts.shape == (10, 32, 4, 4) and acts.dtype == torch.float32 and acts.device.type == "cpu"
    torch.testing.assert_close(acts, expected)
    assert (acts < 0).any(), "the in-place ReLU after the conv leaked into the captured output"
    torch.testing.assert_close(activations(model, digits_spec, images, batch_size=3), acts)


def test_activation_norms_oracle(model, digits_spec, images):
    flat = _manual_activations(model, digits_spec, images).flatten(1)  # (N, 512)
    stats = activation_norms(model, digits_spec, images)
    assert len(stats) == 10 and all(getattr(stats, k).shape == (10,) for k in ("l1", "l2", "linf"))
    np.testing.assert_allclose(stats.l1, flat.abs().sum(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats.l2, torch.linalg.vector_norm(flat, dim=1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats.linf, flat.abs().amax(1).numpy(), rtol=1e-6)
    assert (stats.linf <= stats.l2).all() and (stats.l2 <= stats.l1).all()


def test_channel_linf_is_the_max_over_space(model, digits_spec, images):
    per_channel = channel_linf(model, digits_spec, images)
    assert per_channel.shape == (10, 32)
    np.testing.assert_allclose(per_channel, activations(model, digits_spec, images).amax(dim=(2, 3)).numpy())


def test_custom_layer_gives_post_relu_values(model, digits_spec, images):
    acts = activations(model, digits_spec, images, layer=model.features[3])  # the ReLU after the last conv
    torch.testing.assert_close(acts, _manual_activations(model, digits_spec, images).relu())


def test_hook_removed_and_mode_restored_when_the_model_raises(model, digits):
    model.train()
    wrong = ModelSpec("paper-cnn", 10, (1, 10, 10))  # the model was built for 8×8; its Linear will fail
    images = torch.zeros((2, 1, 10, 10), dtype=torch.uint8)
    with pytest.raises(RuntimeError):
        activations(model, wrong, images)
    assert not model.features[2]._forward_hooks
    assert not any(m._forward_hooks for m in model.modules())
    assert all(m.training for m in model.modules())


def test_bad_images_are_input_errors(model, digits_spec, images):
    with pytest.raises(InputError, match="uint8"):
        activation_norms(model, digits_spec, images.float())
    with pytest.raises(InputError, match=r"expects \(1, 8, 8\)"):
        activation_norms(model, digits_spec, torch.zeros((2, 1, 9, 9), dtype=torch.uint8))
    with pytest.raises(ConfigError, match="batch_size"):
        activations(model, digits_spec, images, batch_size=0)


def test_empty_input(model, digits_spec, images):
    assert activations(model, digits_spec, images[:0]).shape == (0, 32, 4, 4)
    assert channel_linf(model, digits_spec, images[:0]).shape == (0, 32)
    assert len(activation_norms(model, digits_spec, images[:0])) == 0


def test_norm_stats_is_a_frozen_serialisable_value():
    stats = NormStats(l1=[3.0, 4.0], l2=np.array([2.0, 3.0]), linf=(1.0, 2.0))
    d = stats.to_dict()
    assert d == {"l1": [3.0, 4.0], "l2": [2.0, 3.0], "linf": [1.0, 2.0]}
    assert all(type(v) is list for v in d.values())
    np.testing.assert_array_equal(NormStats.from_dict(d).l2, stats.l2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.l1 = np.zeros(2)
    with pytest.raises(ValueError):
        stats.l1[0] = 0.0
    with pytest.raises(InputError, match="lengths"):
        NormStats(l1=[1.0], l2=[1.0, 2.0], linf=[1.0])
    with pytest.raises(ConfigError, match="keys"):
        NormStats.from_dict({"l1": [1.0]})


def test_compare_norms_with_and_without_trigger(digits_spec, images):
    a = seeded_model(lambda: build_model(digits_spec), 0)
    b = seeded_model(lambda: build_model(digits_spec), 1)
    models = {"vanilla": (a, digits_spec), "suspect": (b, digits_spec)}

    result = compare_norms(models, images, TRIGGER)

    assert set(result) == {"vanilla", "suspect"}
    for name, (model, spec) in models.items():
        assert set(result[name]) == {"clean", "triggered"}
        assert all(len(s) == 10 for s in result[name].values())
        oracle = activation_norms(model, spec, TRIGGER.stamp(images))
        np.testing.assert_allclose(result[name]["triggered"].linf, oracle.linf)
        assert not np.allclose(result[name]["triggered"].l1, result[name]["clean"].l1)
    assert not np.allclose(result["vanilla"]["clean"].l2, result["suspect"]["clean"].l2)

    clean_only = compare_norms(models, images, None)
    assert {k: set(v) for k, v in clean_only.items()} == {"vanilla": {"clean"}, "suspect": {"clean"}}
    np.testing.assert_allclose(clean_only["suspect"]["clean"].l1, result["suspect"]["clean"].l1)
