"""Masking (pruning) output channels of a conv layer so that the mask lives in the weights.

Shared by ℓ∞ pruning (seed 004) and fine-pruning (Liu et al. 2018). A repaired model is saved as a
plain state_dict of its architecture and reloaded by `kdcore.models.loading`, so a mask cannot be a
forward hook. Instead, masking channel c of a conv layer:

1. zeroes the conv's filter c (weight[c], and bias[c] if there is one), so its output channel is 0;
2. when a BatchNorm consumes that output, zeroes the BN's weight[c] and bias[c] too, so the BN
   output is (x − μ)/σ · 0 + 0 = 0 whatever its running statistics, in eval and in train mode.

After 1–2 the channel is exactly 0 after conv (+ BN) + ReLU. In a residual block the zeroed branch
is still added to the shortcut: what is removed is the conv's contribution, as in any filter pruning.

"Consumes" is found by tracing, not guessed from names: one dummy forward pass records which
modules receive the conv's output tensor itself as their input (`kdcore.models.layers.consumers`,
the same trace that picks the last conv by execution order). Registration order would also work
for the registry's models (paper-cnn: conv → ReLU; resnet18-small: conv → bn), but not for
models that define layers out of order. A consumer that mixes or normalises
channels in a way a per-channel zero cannot survive (GroupNorm, LayerNorm, an affine-free BN)
raises ConfigError; functional ops (F.relu, +) are invisible to the trace and harmless, because they
see a channel that is already exactly 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from kdcore.errors import ConfigError
from kdcore.hooks import trace
from kdcore.models.layers import choose_layer
from kdcore.models.layers import consumers as layer_consumers
from kdcore.models.spec import ModelSpec

# Consumers whose output for a zero input channel would not stay zero after step 2.
_UNMASKABLE = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True, eq=False)
class ChannelLayer:
    """A conv layer of one model instance whose output channels can be masked."""

    conv: nn.Conv2d
    name: str  # qualified name in the model, e.g. "features.2"
    norm: nn.modules.batchnorm._BatchNorm | None = None  # the BN that consumes the conv's output
    norm_name: str | None = None

    @property
    def channels(self) -> int:
        return self.conv.out_channels

    @property
    def activation_layer(self) -> nn.Module:
        """The module whose output, after ReLU, is a channel's activation: the BN when there is one."""
        return self.norm if self.norm is not None else self.conv

    def masked_params(self) -> list[nn.Parameter]:
        """Every parameter with one entry per output channel along dim 0 that masking zeroes."""
        params = [self.conv.weight, self.conv.bias]
        if self.norm is not None:
            params += [self.norm.weight, self.norm.bias]
        return [p for p in params if p is not None]


def channel_layer(model: nn.Module, spec: ModelSpec, name: str | None = None) -> ChannelLayer:
    """The conv layer called `name` in `model` (default: the last conv to run) and the BN that consumes it.

    The conv is `choose_layer(..., "last_conv", name)`; one traced dummy forward pass (2 blank
    images, eval mode, modes restored) shows which modules take the conv's output tensor as input.
    Raises ConfigError when `name` is not a Conv2d, when the conv runs more than once per forward
    pass, or when its output goes into a layer whose channels a zero filter cannot switch off.
    """
    name, conv = choose_layer(model, spec, "last_conv", name)
    modules = dict(model.named_modules())
    consumers = [c.name for c in layer_consumers(trace(model, spec.input_shape), name)]

    norm, norm_name = None, None
    for n in dict.fromkeys(consumers):  # in call order, each once
        m = modules[n]
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not m.affine:
                raise ConfigError(
                    f"{name!r} feeds {n!r}, a BatchNorm without affine weights, whose output for a zeroed "
                    "channel is −μ/σ, not 0; pick a conv layer followed by an affine BatchNorm or none"
                )
            if norm is not None:
                raise ConfigError(f"{name!r} feeds two BatchNorms ({norm_name!r}, {n!r}); cannot mask its channels")
            norm, norm_name = m, n
        elif isinstance(m, _UNMASKABLE):
            raise ConfigError(
                f"{name!r} feeds {n!r} ({type(m).__name__}), which mixes channels, so zeroing a filter does not "
                "switch the channel off; pick another conv layer"
            )
    return ChannelLayer(conv, name, norm, norm_name)


def _index(layer: ChannelLayer, channels: Iterable[int]) -> torch.Tensor:
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= layer.channels):
        raise ConfigError(f"Channel indices must be in [0, {layer.channels}) for {layer.name!r}; got {idx.tolist()}")
    return idx


@torch.no_grad()
def zero_channels(layer: ChannelLayer, channels: Iterable[int]) -> None:
    """Mask `channels` of `layer` in place: zero their filters (and the consuming BN's affine)."""
    idx = _index(layer, channels)
    for p in layer.masked_params():
        p[idx.to(p.device)] = 0


def freeze_channels(layer: ChannelLayer, channels: Iterable[int]) -> list[torch.utils.hooks.RemovableHandle]:
    """Keep masked channels at exactly 0 while the model trains: zero their gradients.

    A parameter that is 0 and only ever gets a 0 gradient stays 0 under SGD (with momentum and weight
    decay: every term is a multiple of the parameter or of past gradients) and under Adam (moments
    0, update 0). Returns the hook handles; remove them after training so no hook is left behind.
    """
    idx = _index(layer, channels)
    handles = []
    for p in layer.masked_params():
        keep = torch.ones(p.shape[0], dtype=p.dtype, device=p.device)
        keep[idx.to(p.device)] = 0
        keep = keep.view(-1, *([1] * (p.dim() - 1)))  # broadcast over the filter's other dims
        handles.append(p.register_hook(lambda g, k=keep: g * k))
    return handles


def masked_channels(layer: ChannelLayer) -> list[int]:
    """Channels whose parameters are all exactly 0 (a masked channel, seen from the weights alone)."""
    zero = torch.ones(layer.channels, dtype=torch.bool, device=layer.conv.weight.device)
    for p in layer.masked_params():
        zero &= (p.detach().reshape(p.shape[0], -1) == 0).all(dim=1)
    return zero.nonzero().flatten().tolist()
