"""BadNets patch trigger (Gu et al. 2017), as used by seed 000.

MNIST setup: a white dot in the lower-right corner, all-to-one to class 7.
GTSRB setup: a yellow square at the bottom centre, source-specific STOP → speed limit 100.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdcore.errors import ConfigError
from kdcore.triggers.base import Trigger

LOCATIONS = ("bottom-right", "bottom-center", "bottom-left", "top-right", "top-left", "center")


def corner(
    h: int, w: int, ph: int, pw: int, location: str, margin: int, what: str, larger: str = ""
) -> tuple[int, int]:
    """Top-left corner (row, col) of a ph×pw patch `margin` pixels from the edges at `location` in an
    h×w image (shared by BadNets and image patches). ConfigError naming `what` if it does not fit,
    saying the margin that fits, or, for a patch larger than the image, `larger` (what to give instead)."""
    m = margin
    if ph + m > h or pw + m > w:
        if ph > h or pw > w:
            fix = larger or f"it is larger than the image; give one of at most {h}×{w}"
        else:
            fits = min(h - ph, w - pw)
            fix = f"a margin of at most {fits} fits (margin={fits})"
        raise ConfigError(f"A {what} with margin {m} does not fit in a {h}×{w} image: {fix}")
    vertical, _, horizontal = location.partition("-")
    row = {"bottom": h - m - ph, "top": m, "center": (h - ph) // 2}[vertical]
    col = {"right": w - m - pw, "left": m, "center": (w - pw) // 2, "": (w - pw) // 2}[horizontal]
    return row, col


@dataclass(frozen=True)
class BadNets(Trigger):
    """A solid size×size patch of `color`, `margin` pixels from the edges at `location`."""

    size: int = 3
    location: str = "bottom-right"
    margin: int = 1
    color: tuple[int, ...] = (255, 255, 255)  # RGB; grey images get its luminance
    kind = "badnets"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.location not in LOCATIONS:
            raise ConfigError(f"BadNets location {self.location!r}; expected one of {LOCATIONS}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.size, self.margin)):
            raise ConfigError(f"BadNets size and margin must be whole pixels; got {self.size!r}, {self.margin!r}")
        if self.size < 1 or self.margin < 0:
            raise ConfigError(f"BadNets size must be ≥ 1 and margin ≥ 0; got {self.size}, {self.margin}")
        color = (self.color,) if isinstance(self.color, (int, str)) else tuple(self.color)
        if len(color) not in (1, 3) or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
            raise ConfigError(f"BadNets color must be one grey level or R/G/B in 0..255; got {self.color}")
        object.__setattr__(self, "color", tuple(int(c) for c in color))

    def box(self, h: int, w: int) -> tuple[int, int]:
        """Top-left corner (row, col) of the patch in an h×w image."""
        larger = f"it is larger than the image; give a size of at most {min(h, w)}"
        return corner(h, w, self.size, self.size, self.location, self.margin, f"{self.size}px patch", larger)

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        c, h, w = images.shape[1:]
        r, k = self.box(h, w)
        rgb = self.color * 3 if len(self.color) == 1 else self.color
        if c == 1:
            value = torch.tensor([round(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])], dtype=torch.uint8)
        else:
            value = torch.tensor(rgb, dtype=torch.uint8)
        out[:, :, r : r + self.size, k : k + self.size] = value.view(1, c, 1, 1)
        return out
