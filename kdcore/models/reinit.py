"""A fresh, untrained copy of a graph read from a file (an ONNX conversion, a torch.export program):
the student those formats' `build` hands to distillation (kdcore.models.onnxfile, kdcore.models.pt2file)."""

from __future__ import annotations

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
