"""WaNet trigger (Nguyen & Tran, ICLR 2021, "WaNet – imperceptible warping-based backdoor attack"):
the image is resampled through a fixed, smooth warping field.

1. Draw a k×k grid of (x, y) offsets uniform in [−1, 1] from `grid_seed` (2, k, k).
2. Divide it by its mean absolute value, so the field's mean |offset| is 1.
3. Upsample it bicubically (align_corners=True) to H×W.
4. grid = clamp(identity + s · field / size, −1, 1), `size` = H for y and W for x as in the
   authors' code (`s * noise_grid / input_height`): a control point moves s/2 · |field| pixels
   along each axis at any image size (about 0.33·s px on average over the smooth field).
5. x' = grid_sample(x, grid, bilinear, align_corners=True), rounded back to uint8.

The authors use k = 4, s = 0.5 (with 10 % poisons and long training). kdcore's default is s = 1.0
(a control point moves ~0.5 px, the field ~0.33 px on average), still a barely visible warp: on the
quick Fashion-MNIST demo (5 epochs) s = 0.5 reaches asr ≈ 0.15 with 2 % poisons, s = 1.0 ≈ 0.60 with
2 % and ≈ 0.86 with 5 %. The authors' training also mixes in "noise mode" samples
(the trigger warp plus a random warp, labels kept) so the model learns this one warp and not warps
in general; kdcore's poisoning only stamps and relabels, so that mode is left out. Tiny images
(8×8 digits) are warped by the same fraction of a pixel, which can be nearly invisible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdcore.errors import ConfigError
from kdcore.triggers.base import Trigger


@dataclass(frozen=True)
class WaNet(Trigger):
    grid_size: int = 4  # k: control points per side of the random field
    strength: float = 1.0  # s: shift in half-pixels per unit of field (0 = no warp, a control)
    grid_seed: int = 0
    kind = "wanet"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("grid_size", "grid_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"WaNet {name} must be a whole number; got {v!r}")
        if self.grid_size < 2:
            raise ConfigError(f"WaNet grid_size must be ≥ 2 control points per side; got {self.grid_size}")
        if self.grid_seed < 0:
            raise ConfigError(f"WaNet grid_seed must be ≥ 0; got {self.grid_seed}")
        s = self.strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            raise ConfigError(
                f"WaNet strength must be a number ≥ 0 (the authors use 0.5, kdcore's default is 1); got {s!r}"
            )
        object.__setattr__(self, "strength", float(s))

    def field(self) -> torch.Tensor:
        """The normalised float32 (2, k, k) offsets (channel 0: x, 1: y), mean |offset| = 1 (steps 1–2)."""
        g = torch.Generator().manual_seed(self.grid_seed)
        ins = torch.rand((2, self.grid_size, self.grid_size), generator=g) * 2 - 1
        return ins / ins.abs().mean()

    def grid(self, h: int, w: int) -> torch.Tensor:
        """The float32 (1, H, W, 2) sampling grid for grid_sample, (x, y) in [−1, 1] (steps 3–4)."""
        if self.grid_size > min(h, w):
            raise ConfigError(f"A WaNet grid of {self.grid_size}×{self.grid_size} does not fit a {h}×{w} image")
        up = F.interpolate(self.field()[None], size=(h, w), mode="bicubic", align_corners=True)[0]  # (2, H, W)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack((xs, ys), dim=-1)  # (H, W, 2)
        offset = self.strength * torch.stack((up[0] / w, up[1] / h), dim=-1)
        return (identity + offset).clamp_(-1, 1)[None]

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        grid = self.grid(h, w).expand(n, h, w, 2)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.round_().clamp_(0, 255).to(torch.uint8)
