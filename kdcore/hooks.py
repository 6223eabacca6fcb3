"""The one place kdcore hooks into a model: capture named layers' tensors, trace a forward pass.

Explain (activations, ℓp norms), ℓ∞ pruning, fine-pruning, NAD and activation clustering all
need "hook a layer, run the model, keep what it saw, put the model back". Each used to carry its
own copy; this module is the only one left. Which layer to hook is `kdcore.models.layers`' job.

- `Capture` / `capture`: forward hooks that keep each named module's latest output (or input).
  Outputs are cloned by default: an in-place op after the module (paper-cnn's and VGG's
  `ReLU(inplace=True)` after a conv) rewrites the very tensor the hook saw, so without the clone
  a CPU run would see post-ReLU values and a GPU run (different aliasing) pre-ReLU ones. The clone
  keeps autograd's graph, so NAD can backpropagate through a captured activation; callers that need
  no gradient run under `torch.inference_mode()`.
- `restored_modes`: put every module's `training` flag back exactly as found, even on an exception
  (a model may mix modes, e.g. a frozen BatchNorm in eval inside a training model).
- `trace`: every submodule call of one dummy forward pass (2 blank images, eval mode, inference
  mode, modes restored), in the order the calls finish, with their inputs and outputs, so layer
  choice follows execution order and "which module consumes this tensor" is an identity test.

Hooks are removed on exit from a `with` block or by `remove()`; nothing is left on the model.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from kdcore.errors import ConfigError


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ConfigError(f"{type(model).__name__} has no parameters; cannot tell which device it runs on") from None


@contextlib.contextmanager
def restored_modes(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Within the block the model is in eval mode (unless `eval_mode=False`); afterwards every
    module's `training` flag is what it was before, exception or not."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _resolve(model: nn.Module, layers: Mapping[str, nn.Module] | Sequence[str]) -> dict[str, nn.Module]:
    if isinstance(layers, Mapping):
        return dict(layers)
    modules = dict(model.named_modules())
    unknown = [n for n in layers if n not in modules]
    if unknown:
        some = [n for n in modules if n][:20]
        raise ConfigError(f"{type(model).__name__} has no module named {unknown}; pick from {some}...")
    return {n: modules[n] for n in layers}


class Capture(Mapping[str, torch.Tensor]):
    """Forward hooks on named modules; `cap[name]` is the tensor of that module's latest call.

    what: "output" (forward hook) or "input" (its first positional input, forward pre-hook).
    clone: copy the tensor inside the hook (see the module docstring: in-place ReLUs).
    `calls[name]` counts the calls since the last `clear()`; `one(name)` insists on exactly one.
    Use as a context manager (`capture`), or call `remove()` when the hooks span a training loop.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module] | Sequence[str],
        *,
        what: Literal["output", "input"] = "output",
        clone: bool = True,
    ) -> None:
        if what not in ("output", "input"):
            raise ConfigError(f"Capture takes what='output' or 'input'; got {what!r}")
        self.out: dict[str, torch.Tensor] = {}
        self.calls: Counter[str] = Counter()
        self._what, self._clone = what, clone
        modules = _resolve(model, layers)
        self.handles = []
        try:
            for name, module in modules.items():
                if what == "output":
                    self.handles.append(module.register_forward_hook(self._on_output(name)))
                else:
                    self.handles.append(module.register_forward_pre_hook(self._on_input(name)))
        except BaseException:
            self.remove()
            raise

    def _keep(self, name: str, module: nn.Module, t) -> None:
        if not isinstance(t, torch.Tensor):
            raise ConfigError(
                f"{name!r} ({type(module).__name__}) has a {self._what} of type {type(t).__name__}, not one tensor; "
                f"pick a layer whose {self._what} is an activation tensor"
            )
        self.out[name] = t.clone() if self._clone else t
        self.calls[name] += 1

    def _on_output(self, name: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            self._keep(name, module, output)

        return hook

    def _on_input(self, name: str):
        def hook(module: nn.Module, inputs) -> None:
            self._keep(name, module, inputs[0] if inputs else None)

        return hook

    def one(self, name: str) -> torch.Tensor:
        """The tensor of `name`'s only call since `clear()`; ConfigError when it ran 0 or ≥ 2 times."""
        if self.calls[name] != 1:
            raise ConfigError(
                f"{name!r} ran {self.calls[name]} times in one forward pass; pick a layer the model uses exactly once"
            )
        return self.out[name]

    def clear(self) -> None:
        self.out.clear()
        self.calls.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.out[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.out)

    def __len__(self) -> int:
        return len(self.out)


@contextlib.contextmanager
def capture(
    model: nn.Module,
    layers: Mapping[str, nn.Module] | Sequence[str],
    *,
    what: Literal["output", "input"] = "output",
    clone: bool = True,
    eval_mode: bool = True,
) -> Iterator[Capture]:
    """`with capture(model, ["features.2"]) as cap: model(x); a = cap["features.2"]`.

    layers: module names (`model.named_modules()`) or {name: module}. In eval mode by default;
    on exit every hook is removed and every module's `training` flag restored, even on exceptions.
    """
    with restored_modes(model, eval_mode):
        cap = Capture(model, layers, what=what, clone=clone)
        try:
            yield cap
        finally:
            cap.remove()


@dataclass(frozen=True, eq=False)
class Call:
    """One submodule call of a traced forward pass."""

    name: str  # qualified module name
    module: nn.Module
    inputs: tuple  # the positional inputs, as passed (identity matters, not values)
    output: object

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.output.shape) if isinstance(self.output, torch.Tensor) else ()

    def consumes(self, t: torch.Tensor) -> bool:
        """Whether this call received the tensor `t` itself (not a copy) as an input."""
        return any(x is t for x in self.inputs if isinstance(x, torch.Tensor))


def trace(model: nn.Module, input_shape: Sequence[int], device: torch.device | None = None) -> list[Call]:
    """Every named submodule call of one forward pass of 2 blank images of `input_shape` (C, H, W),
    in the order calls finish.

    Eval mode and `torch.inference_mode()` (no BatchNorm statistics change, no dropout draws),
    modes restored and hooks removed afterwards. The calls keep their tensors alive so identity
    tests (`Call.consumes`) cannot be fooled by a reused id.
    """
    calls: list[Call] = []

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            calls.append(Call(name, module, tuple(inputs), output))

        return hook

    device = model_device(model) if device is None else device
    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with restored_modes(model), torch.inference_mode():
            model(torch.zeros((2, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
    return calls
