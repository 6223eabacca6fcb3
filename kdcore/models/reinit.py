"""A fresh, untrained copy of a graph read from a file (an ONNX conversion, a torch.export program):
the student those formats' `build` hands to distillation (kdcore.models.onnxfile, kdcore.models.pt2file)."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.errors import ConfigError


def reinitialise(model: nn.Module) -> nn.Module:
    """`model` with fresh parameters: a converted or exported graph as a new, untrained student.

    Every module with `reset_parameters` (convolutions, linear and norm layers: the layers the
    converters produce) resets itself with PyTorch's own default initialisation; norm layers also
    reset their running statistics. A parameter that no such module owns is refused, so a student
    never silently starts with the teacher's weights. In place; returns `model` in train mode.
    """
    covered: set[int] = set()
    for m in model.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
            covered.update(id(p) for p in m.parameters(recurse=False))
        if hasattr(m, "reset_running_stats") and callable(m.reset_running_stats):
            m.reset_running_stats()
    left = [n for n, p in model.named_parameters() if id(p) not in covered]
    if left:
        raise ConfigError(
            f"{len(left)} parameters of this graph belong to no layer that can re-initialise itself "
            f"(e.g. {', '.join(left[:3])}), so no fresh student can be built from it"
        )
    return model.train()


# A file graph's student option (ModelSpec.extra, kdcore.models.registry.student_spec): normalisation
# where the graph has none. Exporters fold BatchNorm into the convolutions (torch.onnx.export's
# constant folding), so a re-initialised MobileNet read from an ONNX file is a deep net with no
# normalisation at all: distilled for 30 epochs on 800 images it agreed with its teacher on 34 % of
# the test images, against 79 % with a BatchNorm after each convolution (the model zoo's MobileNet).
STUDENT_NORM = "student_norm"
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class NormedConv2d(nn.Conv2d):
    """A 2-d convolution with a BatchNorm of its own after it: still an nn.Conv2d at the same path, so a
    layer chosen by name on the teacher's graph names the same layer of the student."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        self.load_state_dict(conv.state_dict())  # its own fresh draw, kept
        self.bn = nn.BatchNorm2d(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(super().forward(x))


def fresh(model: nn.Module, spec_extra: dict) -> nn.Module:
    """A file graph's fresh student: `reinitialise`d, and `normalised` where its spec asks (STUDENT_NORM)."""
    model = reinitialise(model)
    return normalised(model) if spec_extra.get(STUDENT_NORM) else model


def normalised(model: nn.Module) -> nn.Module:
    """`model` with each 2-d convolution followed by a BatchNorm (`NormedConv2d`) when it has no
    normalisation layer at all (a graph whose exporter folded its BatchNorm into the convolutions),
    otherwise as it is. In place; returns `model`."""
    modules = dict(model.named_modules())
    if any(isinstance(m, NORMS) for m in modules.values()):
        return model
    for name, m in modules.items():
        if type(m) is nn.Conv2d and name:
            parent, _, last = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, last, NormedConv2d(m))
    return model
