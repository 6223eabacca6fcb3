"""Last-conv-layer activations and their ℓp norms (seed 004: Cheng et al., "Defending against
Backdoor Attack on Deep Neural Networks", AdvML@KDD 2019, §4 and Figs. 3–4).

Steps:
1. Pick the layer: by default the final convolutional layer to run,
   `choose_layer(model, spec, "last_conv")` (for paper-cnn `features[2]`); `role="conv_activation"`
   picks the BatchNorm that consumes it when there is one (resnet18-small `layer4.1.bn2`), the
   activation ℓ∞ pruning scores. Both are in `kdcore.models.layers`.
2. Run the images through the model in eval mode under `torch.inference_mode()` and capture that
   layer's output (`kdcore.hooks.capture`): A (N, C, h, w) (`activations`, Fig. 3's activation
   map); with `relu=True`, max(A, 0), what the ReLU after the layer passes on.
3. Per image, flatten A to its C·h·w values and take ℓ1 = Σ|a|, ℓ2 = √Σa², ℓ∞ = max|a|
   (`activation_norms` → `NormStats`).
4. Do 3 for clean images and for the same images with the trigger (`compare_norms`): the seed's
   Fig. 4 histograms, where the trigger shifts ℓ∞ the most.
5. Per image and channel, the largest activation (`channel_linf`, (N, C)): the score that §5's
   ℓ∞ neuron pruning ranks channels by.

What is captured is the hooked layer's *output*, so for a conv layer the values before any
following BatchNorm/ReLU (they can be negative; hence |a| in the norms); the capture clones it, so
an in-place ReLU after the conv (paper-cnn, VGG) does not rewrite it on the CPU.
The Explain page shows `role="conv_activation", relu=True`: the same activation ℓ∞ pruning prunes by.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kdcore.errors import ConfigError, InputError
from kdcore.hooks import capture, model_device
from kdcore.models.layers import Role, choose_layer
from kdcore.models.spec import ModelSpec
from kdcore.train import batches
from kdcore.triggers.base import Trigger

NORMS = ("l1", "l2", "linf")  # NormStats fields, in the order the dashboard facets them
_CHOSEN = "the chosen layer"  # its name in error messages


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value to compare by
class NormStats:
    """ℓ1, ℓ2 and ℓ∞ norms of each image's whole activation tensor (C·h·w values), float64 (N,)."""

    l1: np.ndarray
    l2: np.ndarray
    linf: np.ndarray

    def __post_init__(self) -> None:
        lengths = set()
        for name in NORMS:
            v = np.array(getattr(self, name), dtype=np.float64).reshape(-1)
            v.setflags(write=False)  # frozen all the way down
            object.__setattr__(self, name, v)
            lengths.add(len(v))
        if len(lengths) != 1:
            got = {name: len(getattr(self, name)) for name in NORMS}
            raise InputError(f"NormStats needs one value per image in every norm; got lengths {got}")

    def __len__(self) -> int:
        return len(self.l1)

    def to_dict(self) -> dict[str, list[float]]:
        return {name: getattr(self, name).tolist() for name in NORMS}

    @classmethod
    def from_dict(cls, d: Mapping[str, list[float]]) -> NormStats:
        if set(d) != set(NORMS):
            raise ConfigError(f"NormStats keys must be {list(NORMS)}; got {sorted(d)}")
        return cls(**{name: np.asarray(d[name]) for name in NORMS})


def check_images(spec: ModelSpec, images_u8: torch.Tensor) -> None:
    """Raise InputError unless `images_u8` is uint8 (N, C, H, W) with (C, H, W) = spec.input_shape."""
    if not isinstance(images_u8, torch.Tensor) or images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
        got = getattr(images_u8, "dtype", type(images_u8).__name__), tuple(getattr(images_u8, "shape", ()))
        raise InputError(f"Images must be a uint8 tensor (N, C, H, W); got {got}")
    if tuple(images_u8.shape[1:]) != spec.input_shape:
        raise InputError(
            f"Images are {tuple(images_u8.shape[1:])} but the model expects {spec.input_shape} (C, H, W); "
            "load them with the model's input_shape so they are resized to it"
        )


def reduce_activations(
    model: nn.Module,
    spec: ModelSpec,
    images_u8: torch.Tensor,
    layer: nn.Module | None,
    batch_size: int,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    relu: bool = False,
) -> torch.Tensor:
    """cat over batches of `reduce(A)` on the CPU, A (B, C, h, w) float32 = `layer`'s output
    (default: the last conv to run), max(A, 0) when `relu`.

    One hook for the whole pass, removed (and the model's train/eval modes restored) even when the
    model raises. An empty input runs one blank image to learn the output shape, then returns 0 rows.
    """
    check_images(spec, images_u8)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1; got {batch_size}")
    layer = choose_layer(model, spec, "last_conv")[1] if layer is None else layer
    device = model_device(model)
    n = len(images_u8)
    images = images_u8 if n else images_u8.new_zeros((1, *spec.input_shape))
    out: list[torch.Tensor] = []
    with capture(model, {_CHOSEN: layer}) as cap, torch.inference_mode():
        for idx in batches(len(images), batch_size):
            cap.clear()
            model(spec.normalize(images[idx].to(device, non_blocking=True)))  # (B, K) logits, unused
            acts = cap.one(_CHOSEN).float()  # (B, C, h, w)
            if acts.dim() != 4:
                raise ConfigError(f"The chosen layer outputs shape {tuple(acts.shape)}; expected (B, C, h, w)")
            out.append(reduce(acts.clamp_min(0) if relu else acts).cpu())
    return torch.cat(out)[:n]


def activations(
    model: nn.Module,
    spec: ModelSpec,
    images_u8: torch.Tensor,
    layer: nn.Module | None = None,
    batch_size: int = 256,
    *,
    relu: bool = False,
) -> torch.Tensor:
    """float32 (N, C, h, w) on the CPU: the output of `layer` (default: the last conv) per image,
    max(·, 0) with `relu`.

    Keeps every activation in memory; for statistics over many images prefer `activation_norms`
    or `channel_linf`, which reduce each batch on the model's device.
    """
    return reduce_activations(model, spec, images_u8, layer, batch_size, lambda a: a, relu)


def activation_norms(
    model: nn.Module,
    spec: ModelSpec,
    images_u8: torch.Tensor,
    layer: nn.Module | None = None,
    batch_size: int = 256,
    *,
    relu: bool = False,
) -> NormStats:
    """ℓ1, ℓ2, ℓ∞ of each image's flattened activation tensor (seed 004, Fig. 4)."""

    def norms(a: torch.Tensor) -> torch.Tensor:
        flat = a.flatten(1)  # (B, C·h·w)
        return torch.stack(
            [torch.linalg.vector_norm(flat, ord=p, dim=1, dtype=torch.float64) for p in (1, 2, float("inf"))],
            dim=1,
        )  # (B, 3): l1, l2, linf

    v = reduce_activations(model, spec, images_u8, layer, batch_size, norms, relu).numpy()  # (N, 3)
    return NormStats(l1=v[:, 0], l2=v[:, 1], linf=v[:, 2])


def channel_linf(
    model: nn.Module,
    spec: ModelSpec,
    images_u8: torch.Tensor,
    layer: nn.Module | None = None,
    batch_size: int = 256,
    *,
    relu: bool = False,
) -> np.ndarray:
    """float32 (N, C): each channel's largest activation per image, max over (h, w) (seed 004, §5).

    A signed max, not max|a|: pruning looks for neurons the trigger drives strongly positive.
    """
    return reduce_activations(model, spec, images_u8, layer, batch_size, lambda a: a.amax(dim=(2, 3)), relu).numpy()


def compare_norms(
    models: Mapping[str, tuple[nn.Module, ModelSpec]],
    clean_u8: torch.Tensor,
    trigger: Trigger | None,
    batch_size: int = 256,
    *,
    role: Role = "last_conv",
    relu: bool = False,
) -> dict[str, dict[str, NormStats]]:
    """{model name: {"clean": NormStats, "triggered": NormStats}} for the seed's Fig. 4 histograms.

    "triggered" is `trigger.stamp(clean_u8)`, the same images with the trigger, and is present only
    when a trigger is given. Every image is stamped; to leave out images already of the target class
    (as an attack-success rate would), filter `clean_u8` first. Each model is measured at the layer
    `choose_layer(model, spec, role)` picks, after a ReLU when `relu`.
    """
    triggered = trigger.stamp(clean_u8) if trigger is not None else None
    result: dict[str, dict[str, NormStats]] = {}
    for name, (model, spec) in models.items():
        layer = choose_layer(model, spec, role)[1]
        result[name] = {"clean": activation_norms(model, spec, clean_u8, layer, batch_size, relu=relu)}
        if triggered is not None:
            result[name]["triggered"] = activation_norms(model, spec, triggered, layer, batch_size, relu=relu)
    return result
