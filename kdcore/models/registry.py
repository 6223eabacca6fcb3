"""Architecture registry: name → builder(spec) → nn.Module.

Registered: `paper-cnn` (seed 000 Table 7), `paper-vgg11` (Table 8), `resnet18-small`,
and `tv:<name>` for any torchvision classification model (e.g. `tv:resnet18`), built
without pretrained weights (a user's own weights are loaded on top).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdcore.errors import ConfigError
from kdcore.models.paper import PaperCNN, PaperVGG11
from kdcore.models.resnet import ResNet18Small
from kdcore.models.spec import ModelSpec

Builder = Callable[[ModelSpec], nn.Module]

ARCHS: dict[str, Builder] = {
    "paper-cnn": lambda s: PaperCNN(s.num_classes, s.input_shape),
    "paper-vgg11": lambda s: PaperVGG11(s.num_classes, s.input_shape),
    "resnet18-small": lambda s: ResNet18Small(s.num_classes, s.input_shape),
}

# Default input format per registry architecture (for the UI and CLI to fill in).
DEFAULT_INPUT = {
    "paper-cnn": (1, 28, 28),
    "paper-vgg11": (3, 32, 32),
    "resnet18-small": (3, 32, 32),
}


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models (usable as `tv:<name>`)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def arch_names() -> list[str]:
    return [*sorted(ARCHS), "tv:<torchvision model name>"]


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model for `spec` (CPU, train mode)."""
    if spec.arch in ARCHS:
        try:
            return ARCHS[spec.arch](spec)
        except ValueError as e:
            raise ConfigError(f"Cannot build {spec.arch} for input {spec.input_shape}: {e}") from e
    if spec.arch.startswith("tv:"):
        import torchvision

        name = spec.arch[3:]
        if name not in torchvision_names():
            raise ConfigError(f"Unknown torchvision model '{name}'; pick one of torchvision.models.list_models()")
        model = torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes, **spec.extra)
        if spec.input_shape[0] != 3:
            raise ConfigError(f"torchvision models take 3-channel input; got input_shape {spec.input_shape}")
        return model
    raise ConfigError(f"Unknown architecture '{spec.arch}'; expected one of {arch_names()}")


def check_forward(model: nn.Module, spec: ModelSpec) -> int:
    """Run a dummy batch through `model`; return the number of output classes or raise."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(torch.zeros((2, *spec.input_shape), device=device))
    except RuntimeError as e:
        raise ConfigError(f"The model fails on input of shape {spec.input_shape}: {e}") from e
    finally:
        model.train(was_training)
    if out.dim() != 2 or out.shape[0] != 2:
        raise ConfigError(f"The model should return logits (B, classes); it returned {tuple(out.shape)}")
    if out.shape[1] != spec.num_classes:
        raise ConfigError(
            f"Model outputs {out.shape[1]} classes but {spec.num_classes} were declared; "
            "pick the matching --num-classes"
        )
    return int(out.shape[1])
