"""In-memory image sets: uint8 tensors plus labels, class names and source names.

Datasets of the sizes this tool handles (≤ a few hundred thousand small images) fit in
memory as uint8 (N, C, H, W); batches are converted to float and normalised on the fly
(see `kdcore.models.spec.ModelSpec.normalize`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kdcore.errors import InputError


@dataclass(frozen=True)
class ImageSet:
    """A set of images, optionally labelled.

    images:  uint8 tensor (N, C, H, W), values 0..255.
    labels:  int64 tensor (N,) or None for unlabelled sets.
    class_names: names of the classes, index = label.
    sources: per-image origin (file name inside a folder/zip), or None for built-in data.
    top:     the one top folder of a zip that sources are relative to (`train` for a zip of
             `train/cat/1.png`, source `cat/1.png`), else "".
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: tuple[str, ...] = ()
    sources: tuple[str, ...] | None = None
    name: str = ""
    skipped: tuple[str, ...] = field(default=())  # files that could not be read, for reporting
    top: str = ""

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            got = getattr(x, "dtype", type(x).__name__), tuple(getattr(x, "shape", ()))
            raise InputError(f"Images must be a uint8 tensor (N, C, H, W); got {got}")
        n = x.shape[0]
        if self.labels is not None:
            if self.labels.dim() != 1 or self.labels.shape[0] != n:
                raise InputError(f"{n} images but labels of shape {tuple(self.labels.shape)}")
            if self.labels.dtype != torch.int64:
                object.__setattr__(self, "labels", self.labels.long())
        if self.sources is not None and len(self.sources) != n:
            raise InputError(f"{n} images but {len(self.sources)} source names")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if self.labels is not None and len(self) else 0

    def subset(self, index: torch.Tensor | list[int], name: str | None = None) -> ImageSet:
        """The images at `index` (a 1-D index tensor or list), keeping labels and sources."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            sources=None if self.sources is None else tuple(self.sources[i] for i in idx.tolist()),
            name=self.name if name is None else name,
            top=self.top,
        )

    def unlabeled(self) -> ImageSet:
        """The same images with labels dropped (what a defender holds as clean data)."""
        return ImageSet(self.images, None, self.class_names, self.sources, self.name, top=self.top)

    def with_labels(self, labels: torch.Tensor) -> ImageSet:
        return ImageSet(self.images, labels, self.class_names, self.sources, self.name, top=self.top)

    def require_labels(self, what: str) -> torch.Tensor:
        if self.labels is None:
            raise InputError(f"{what} needs a labelled image set, but '{self.name}' has no labels")
        return self.labels


def split(data: ImageSet, fractions: tuple[float, ...], generator: torch.Generator) -> list[ImageSet]:
    """Randomly split `data` into parts of the given fractions (the last part takes the rest)."""
    n = len(data)
    perm = torch.randperm(n, generator=generator)
    parts, start = [], 0
    for i, f in enumerate(fractions):
        stop = n if i == len(fractions) - 1 else start + round(f * n)
        parts.append(data.subset(perm[start:stop]))
        start = stop
    return parts
