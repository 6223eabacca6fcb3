"""Blended trigger (Chen et al. 2017): x' = (1 − α)·x + α·pattern, with a fixed random pattern.

The pattern is drawn from `pattern_seed`, so the value alone rebuilds the same trigger.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdcore.errors import ConfigError
from kdcore.triggers.base import Trigger


@dataclass(frozen=True)
class Blended(Trigger):
    alpha: float = 0.1
    pattern_seed: int = 0
    kind = "blended"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"Blended alpha must be in (0, 1]; got {self.alpha}")

    def pattern(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The uint8 (C, H, W) noise pattern for images of `shape`."""
        g = torch.Generator().manual_seed(self.pattern_seed)
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        p = self.pattern(tuple(images.shape[1:])).float()
        out = (1 - self.alpha) * images.float() + self.alpha * p
        return out.round_().clamp_(0, 255).to(torch.uint8)
