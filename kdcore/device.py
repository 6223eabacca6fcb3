"""Device choice and mixed precision. The engine never calls `.cuda()` itself: every entry takes
a `torch.device` resolved here once, from `auto|cpu|cuda|cuda:N`."""

from __future__ import annotations

import contextlib

import torch

from kdcore.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → the first CUDA GPU when present, else the CPU."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} was asked for but this machine has no CUDA GPU; use auto or cpu")
        return torch.device(name)
    raise ConfigError(f"Unknown device {name!r}; expected auto, cpu, cuda or cuda:N")


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA (no loss scaling needed); a no-op on the CPU.

    Losses are computed on float32 logits (callers `.float()` them) so the KD softmax at
    T = 20 keeps its precision."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
