"""A patch trigger from an image file: any pattern, any mask, at a BadNets location or at x, y.

    patch:image=P.png[,mask=M.png][,location=bottom-right|x=,y=][,margin=1][,alpha=1][,target=T]

The pattern is stamped at its own size (it must fit in the input; it is never resized). A pattern
as large as the input goes at the origin, whatever the location and margin: attack toolkits give a
trigger as a full-size pattern, zero except the patch, with a full-size mask. Its
weight per pixel is w = alpha · m / 255 (`kdcore.triggers.pattern.apply`), where m is
- the grey level of the mask image when `mask` is given (same size as the pattern; white = patch),
- else the pattern's alpha channel (a transparent PNG is its own mask),
- else 255: a file without alpha and without a mask is an opaque rectangle.
`alpha` < 1 blends the whole patch, e.g. a 3×3 white square at 0.2 as some toolkits' BadNets does.
Where: one of BadNets' `LOCATIONS`, `margin` pixels from the edges (default bottom-right, 1 px), or
the top-left corner at column `x`, row `y`. Files are read and pinned by SHA-256 as
`kdcore.triggers.pattern` describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kdcore.errors import ConfigError
from kdcore.triggers.badnets import LOCATIONS, corner
from kdcore.triggers.base import Trigger
from kdcore.triggers.pattern import Pattern, apply, check_alpha, check_sha256, load_pattern


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Patch(Trigger):
    image: str = ""  # the pattern's image file (PNG, JPEG, ...), stamped at its own size
    image_sha256: str = ""  # "" = pin the file as it is now; else the file must still have this hash
    mask: str = ""  # a grey image of the pattern's size, white = patch; "" = the image's alpha, if any
    mask_sha256: str = ""
    location: str = ""  # one of LOCATIONS; "" = bottom-right, or x and y
    margin: int = 1  # pixels from the edges at `location`
    x: int | None = None  # column of the patch's top-left pixel (with y, instead of location)
    y: int | None = None  # row of the patch's top-left pixel
    alpha: float = 1.0  # the patch's weight: 1 = pasted, 0.2 = blended in at 20 %
    kind = "patch"

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.x is None) != (self.y is None):
            raise ConfigError(f"Give a patch's x and y together (its top-left corner); got x={self.x}, y={self.y}")
        if self.x is not None:
            if not (_whole(self.x) and _whole(self.y) and self.x >= 0 and self.y >= 0):
                raise ConfigError(f"Patch x and y must be whole pixels ≥ 0; got x={self.x!r}, y={self.y!r}")
            if self.location:
                raise ConfigError(f"Give a patch either location ({self.location}) or x and y, not both")
        elif not self.location:
            object.__setattr__(self, "location", "bottom-right")
        elif self.location not in LOCATIONS:
            raise ConfigError(f"Patch location {self.location!r}; expected one of {LOCATIONS}, or x and y")
        if not _whole(self.margin) or self.margin < 0:
            raise ConfigError(f"Patch margin must be whole pixels ≥ 0; got {self.margin!r}")
        object.__setattr__(self, "alpha", check_alpha(self.alpha, "Patch"))
        check_sha256(self.image_sha256, "image_sha256")
        check_sha256(self.mask_sha256, "mask_sha256")
        if self.mask_sha256 and not self.mask:
            raise ConfigError("Patch mask_sha256 is given without a mask file")
        image, image_sha, pattern = load_pattern(self.image, self.image_sha256, "patch image")
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "image_sha256", image_sha)
        opacity = pattern.opacity()
        if self.mask:
            mask, mask_sha, m = load_pattern(self.mask, self.mask_sha256, "patch mask")
            if m.size != pattern.size:
                raise ConfigError(
                    f"The patch mask {mask} is {m.size[0]}×{m.size[1]} pixels but the pattern {image} is "
                    f"{pattern.size[0]}×{pattern.size[1]}; give a mask of the pattern's size"
                )
            object.__setattr__(self, "mask", mask)
            object.__setattr__(self, "mask_sha256", mask_sha)
            opacity = m.grey[0]
        object.__setattr__(self, "_pattern", pattern)
        object.__setattr__(self, "_weight", self.alpha * opacity.float() / 255)  # float32 (h, w)

    @property
    def pattern(self) -> Pattern:
        """The decoded pattern image."""
        return self._pattern  # type: ignore[attr-defined]

    @property
    def weight(self) -> torch.Tensor:
        """float32 (h, w): alpha · mask / 255, each pixel's share of the pattern."""
        return self._weight  # type: ignore[attr-defined]

    def fills(self, h: int, w: int) -> bool:
        """True when the pattern is as large as an h×w image and placed by location: it goes at the
        origin, and the location and margin do not apply (a toolkit's full-size pattern + mask)."""
        return self.x is None and self.pattern.size == (h, w)

    def box(self, h: int, w: int) -> tuple[int, int]:
        """Top-left corner (row, col) of the patch in an h×w image."""
        ph, pw = self.pattern.size
        what = f"{ph}×{pw} patch ({Path(self.image).name})"
        larger = f"it is larger than the image and is never resized; give a pattern of at most {h}×{w}"
        if self.fills(h, w):
            return 0, 0
        if self.x is None:
            return corner(h, w, ph, pw, self.location, self.margin, what, larger)
        if self.y + ph > h or self.x + pw > w:
            if ph > h or pw > w:
                fix = larger
            else:
                x, y = min(self.x, w - pw), min(self.y, h - ph)
                fix = f"its top-left corner fits at x ≤ {w - pw} and y ≤ {h - ph} (e.g. x={x},y={y})"
            raise ConfigError(f"A {what} at x={self.x}, y={self.y} does not fit in a {h}×{w} image: {fix}")
        return self.y, self.x

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        c, h, w = images.shape[1:]
        row, col = self.box(h, w)
        return apply(images, self.pattern.channels(c), self.weight, row, col)
