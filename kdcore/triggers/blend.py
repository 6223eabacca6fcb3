"""A blend trigger from an image file (Chen et al. 2017's Blended with a pattern you have, e.g. a
logo or another toolkit's Hello Kitty): x' = (1 − α·a)·x + α·a·pattern over the whole input.

    blend:image=P.png,alpha=0.2[,target=T]

The pattern is resized to the input's size exactly as the dataset loaders resize an image (PIL
bilinear, antialiased when shrinking; `kdcore.triggers.pattern.resize`), so a pattern of the input's
own size is used pixel for pixel. `a` is the pattern's alpha channel / 255 (resized the same way),
or 1 for a file without alpha. The file is read and pinned by SHA-256 as
`kdcore.triggers.pattern` describes. (`blended` is the seeded-noise variant.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdcore.triggers.base import Trigger
from kdcore.triggers.pattern import Pattern, apply, check_alpha, check_sha256, load_pattern, resize


@dataclass(frozen=True)
class Blend(Trigger):
    image: str = ""  # the pattern's image file (PNG, JPEG, ...), resized to the input
    image_sha256: str = ""  # "" = pin the file as it is now; else the file must still have this hash
    alpha: float = 0.2  # the pattern's weight
    kind = "blend"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "alpha", check_alpha(self.alpha, "Blend"))
        check_sha256(self.image_sha256, "image_sha256")
        image, sha, pattern = load_pattern(self.image, self.image_sha256, "blend image")
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "image_sha256", sha)
        object.__setattr__(self, "_pattern", pattern)

    @property
    def pattern(self) -> Pattern:
        """The decoded pattern image, at its own size."""
        return self._pattern  # type: ignore[attr-defined]

    def resized(self, c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pattern uint8 (c, h, w) and its weight float32 (h, w) = alpha · a, at the input's size."""
        p = resize(self.pattern.channels(c), h, w)
        if self.pattern.alpha is None:
            return p, torch.full((h, w), self.alpha, dtype=torch.float32)
        a = resize(self.pattern.alpha[None], h, w)[0]
        return p, self.alpha * a.float() / 255

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        pattern, weight = self.resized(*images.shape[1:])
        return apply(images, pattern, weight, 0, 0)
