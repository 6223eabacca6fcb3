"""kdcore.models.registry: torchvision options from a spec are checked before the real build."""

from __future__ import annotations

import pytest
import torch

from kdcore.errors import ConfigError
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec

TV = dict(arch="tv:resnet18", num_classes=10, input_shape=(3, 32, 32), mean=(0.5,), std=(0.5,))


def test_valid_options_build_and_the_probe_draws_no_random_numbers() -> None:
    torch.manual_seed(0)
    with_extra = build_model(ModelSpec(**TV, extra={"zero_init_residual": False}))
    torch.manual_seed(0)
    plain = build_model(ModelSpec(**TV))
    for a, b in zip(with_extra.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"foo": 1}, r"does not accept the options \{'foo': 1\} \(TypeError: .*unexpected keyword argument 'foo'"),
        ({"groups": 0}, r"does not accept the options"),
        ({"weights": "IMAGENET1K_V1"}, r"may not set \['weights'\]"),
        ({"num_classes": 5}, r"may not set \['num_classes'\]"),
    ],
)
def test_bad_options_are_config_errors(extra: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(ModelSpec(**TV, extra=extra))


def test_options_that_make_the_model_too_large(set_limits) -> None:
    set_limits(max_tensor_elements=1_000_000)  # resnet18 has 11 M weights
    with pytest.raises(ConfigError, match=r"has 11,\d{3},\d{3} weights; at most 1,000,000 \(max_tensor_elements\)"):
        build_model(ModelSpec(**TV, extra={"zero_init_residual": True}))
