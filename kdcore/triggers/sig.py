"""SIG trigger (Barni, Kallas & Tondi 2019, "A new backdoor attack in CNNs by training set corruption
without label poisoning"): a horizontal sinusoid added to the whole image.

    v(i, j) = Δ · sin(2π · j · f / W)      j = 0 … W−1 the column, the same on every row and channel
    x'      = clip(round(x + v), 0, 255)   on the 0–255 scale

Δ (`delta`) is in pixel levels and f (`frequency`) in cycles across the image width; the paper and
BackdoorBench use Δ = 20, f = 6. The paper poisons *clean-label* (only target-class images, labels
kept); `poison_dataset(..., clean_label=True)` does that, but kdcore's scenarios use the default
label flipping (non-target images stamped and relabelled, like every other trigger here): on the quick
Fashion-MNIST demo, 200 flipped poisons (2 %) give asr ≈ 0.89, while clean-label SIG stays below 0.1
even with 800 of the ~1,000 target-class images stamped. Narrow images alias: f = 6 on 8×8 digits
shows as a period-4/3-column stripe, which is still a fixed pattern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdcore.errors import ConfigError
from kdcore.triggers.base import Trigger


def _real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class SIG(Trigger):
    delta: float = 20.0  # amplitude, pixel levels on the 0–255 scale
    frequency: float = 6.0  # cycles across the image width
    kind = "sig"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _real(self.delta) or not 0 < self.delta <= 255:
            raise ConfigError(f"SIG delta (amplitude in pixel levels) must be in (0, 255]; got {self.delta!r}")
        if not _real(self.frequency) or self.frequency <= 0:
            raise ConfigError(f"SIG frequency (cycles across the width) must be > 0; got {self.frequency!r}")
        object.__setattr__(self, "delta", float(self.delta))
        object.__setattr__(self, "frequency", float(self.frequency))

    def signal(self, width: int) -> torch.Tensor:
        """The float64 (W,) row added to every row: Δ·sin(2π·j·f/W)."""
        j = torch.arange(width, dtype=torch.float64)
        return self.delta * torch.sin(2 * math.pi * j * self.frequency / width)

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        v = self.signal(images.shape[-1]).to(torch.float32)  # (W,) broadcasts over N, C, H
        return (images.float() + v).round_().clamp_(0, 255).to(torch.uint8)
