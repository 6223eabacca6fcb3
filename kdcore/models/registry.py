"""Architecture registry: name → builder(spec) → nn.Module.

Registered: `paper-cnn` (seed 000 Table 7), `paper-vgg11` (Table 8), `resnet18-small`,
and `tv:<name>` for any torchvision classification model (e.g. `tv:resnet18`), built
without pretrained weights (a user's own weights are loaded on top).

A spec's `extra` options are passed to torchvision as keyword arguments, and specs come from
uploaded files, so they are tried first on the meta device (no memory, the random state
restored): options torchvision does not accept are a ConfigError naming them, and so is a model
whose options make it larger than `max_tensor_elements`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdcore import limits
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
        return _build_torchvision(spec.arch[3:], spec)
    raise ConfigError(f"Unknown architecture '{spec.arch}'; expected one of {arch_names()}")


_RESERVED_OPTIONS = ("weights", "weights_backbone", "num_classes", "progress")


def _build_torchvision(name: str, spec: ModelSpec) -> nn.Module:
    import torchvision

    if name not in torchvision_names():
        raise ConfigError(f"Unknown torchvision model '{name}'; pick one of torchvision.models.list_models()")
    if spec.input_shape[0] != 3:
        raise ConfigError(f"torchvision models take 3-channel input; got input_shape {spec.input_shape}")
    reserved = sorted(set(spec.extra) & set(_RESERVED_OPTIONS))
    if reserved:
        raise ConfigError(
            f"The spec's extra options may not set {reserved}: torchvision models are built without pretrained "
            "weights, with num_classes from the spec"
        )
    if spec.extra:
        # Random state restored: the probe must not shift the draws of the real build below.
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            try:
                probe = torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes, **spec.extra)
            except Exception as e:  # any failure of a constructor fed options from an upload is the options'
                raise ConfigError(
                    f"torchvision's {name} does not accept the options {spec.extra} ({type(e).__name__}: {e}); "
                    "fix or remove the spec's extra options"
                ) from e
        size = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
        max_elements = limits.current().max_tensor_elements
        if size > max_elements:
            raise ConfigError(
                f"torchvision's {name} with the options {spec.extra} has {size:,} weights; at most "
                f"{max_elements:,} (max_tensor_elements)"
            )
    return torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes, **spec.extra)


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
