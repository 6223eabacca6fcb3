"""Architecture registry: name → builder(spec) → nn.Module.

Every way a model comes in ends here: `build_model(spec)` gives a freshly initialised model of
the spec's architecture (the student starts from it; the teacher is the same build with the
file's weights loaded on top). The names it knows:

    paper-cnn, paper-vgg11,      built in (seed 000 Tables 7 and 8; BCU's ResNet-18 for 32 × 32)
    resnet18-small
    tv:<name>                    any torchvision classification model, e.g. `tv:resnet18`
    timm:<name>                  any timm model, e.g. `timm:resnet18` (`kdcore.models.timmhf`)
    onnx, pt2                    the graph in the spec's `source` file: an ONNX model converted with
                                 onnx2torch (`kdcore.models.onnxfile`) or a torch.export archive
                                 (`kdcore.models.pt2file`), parameters re-initialised
    file:<Class>                 a class in the spec's `source` Python file; runs that file, so only
                                 with trust (`kdcore.models.plugins`)
    <plugin name>                registered by an installed package under the entry-point group
                                 `kdaudit.architectures` (`kdcore.models.plugins`)

All are built without pretrained weights (a user's own weights are loaded on top).

A spec's `extra` options are passed to torchvision as keyword arguments, and specs come from
uploaded files, so they are tried first on the meta device (no memory, the random state
restored): options torchvision does not accept are a ConfigError naming them, and so is a model
whose options make it larger than `max_tensor_elements`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from kdcore import limits
from kdcore.errors import ConfigError
from kdcore.models.paper import PaperCNN, PaperVGG11
from kdcore.models.plugins import build_plugin, plugin_names
from kdcore.models.reinit import STUDENT_NORM
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
    import torchvision  # heavy: torchvision, only for tv: architectures

    return sorted(torchvision.models.list_models(module=torchvision.models))


# Architectures whose graph is in a file (the spec's `source`), and name prefixes, each built by
# "module:function" (imported only when used: onnx2torch and timm are heavy).
FILE_ARCHS = {"onnx": "kdcore.models.onnxfile:build", "pt2": "kdcore.models.pt2file:build"}
PREFIXES = {
    "tv:": "kdcore.models.registry:_build_torchvision",
    "timm:": "kdcore.models.timmhf:build",
    "file:": "kdcore.models.plugins:build_file",
}


def student_spec(spec: ModelSpec, arch: str = "") -> ModelSpec:
    """The spec of the student distilled from a teacher of `spec`: `arch` ("" = the teacher's own,
    freshly initialised); a file graph's student carries STUDENT_NORM: its builder gives it normalisation
    where the graph has none (kdcore.models.reinit.normalised)."""
    if arch:
        return spec.replace(arch=arch)
    if spec.arch in FILE_ARCHS:
        return spec.replace(extra={**spec.extra, STUDENT_NORM: True})
    return spec


def arch_names() -> list[str]:
    """Every name `--arch` takes: built-ins, installed plugins, and the prefixed families."""
    return [*sorted(ARCHS), *plugin_names(), "tv:<torchvision model name>", "timm:<timm model name>"]


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model for `spec` (CPU, train mode). Unknown names are a ConfigError."""
    if spec.arch in ARCHS:
        try:
            return ARCHS[spec.arch](spec)
        except ValueError as e:
            raise ConfigError(f"Cannot build {spec.arch} for input {spec.input_shape}: {e}") from e
    if spec.arch in FILE_ARCHS:
        return _call(FILE_ARCHS[spec.arch], spec)
    for prefix, target in PREFIXES.items():
        if spec.arch.startswith(prefix):
            return _call(target, spec)
    if spec.arch in plugin_names():
        return build_plugin(spec)
    raise ConfigError(f"Unknown architecture '{spec.arch}'; expected one of {arch_names()}")


def _call(target: str, spec: ModelSpec) -> nn.Module:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(spec)


_RESERVED_OPTIONS = ("weights", "weights_backbone", "num_classes", "progress")


def _build_torchvision(spec: ModelSpec) -> nn.Module:
    import torchvision  # heavy: torchvision, only for tv: architectures

    name = spec.arch.removeprefix("tv:")
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
        probe_size(
            lambda: torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes, **spec.extra),
            f"torchvision's {name}",
            spec.extra,
        )
    return torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes, **spec.extra)


def probe_size(make: Callable[[], nn.Module], what: str, options: dict) -> int:
    """Build `make()` on the meta device (no memory, the random state restored) and return its size.

    Options from an uploaded spec reach third-party constructors, so a constructor failure is a
    ConfigError naming `options`, and a model over `max_tensor_elements` weights is refused before
    any memory is allocated for it.
    """
    # Random state restored: the probe must not shift the draws of the real build that follows.
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            probe = make()
        except Exception as e:  # any failure of a constructor fed options from an upload is the options'
            raise ConfigError(
                f"{what} does not accept the options {options} ({type(e).__name__}: {e}); "
                "fix or remove the spec's extra options"
            ) from e
    size = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    max_elements = limits.current().max_tensor_elements
    if size > max_elements:
        raise ConfigError(
            f"{what} with the options {options} has {size:,} weights; at most {max_elements:,} (max_tensor_elements)"
        )
    return size


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
