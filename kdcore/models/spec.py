"""ModelSpec: everything needed to rebuild a model and feed it images.

A spec travels with every saved model (a `.json` beside the `.safetensors`, and the same
fields in the safetensors metadata), so a checkpoint can be rebuilt without guessing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import torch

from kdcore.errors import ConfigError

SPEC_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """Architecture name, classes and input format of a classifier.

    input_shape: (C, H, W) the model expects; images are resized/converted to it.
    mean, std:   per-channel normalisation applied to images scaled to [0, 1].
    """

    arch: str
    num_classes: int
    input_shape: tuple[int, int, int] = (1, 28, 28)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    class_names: tuple[str, ...] = ()
    format_version: int = SPEC_FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # architecture options (e.g. torchvision kwargs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "class_names", tuple(str(v) for v in self.class_names))
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2; got {self.num_classes}")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ConfigError(f"input_shape must be (C, H, W) with positive sizes; got {self.input_shape}")
        c = self.input_shape[0]
        if c not in (1, 3):
            raise ConfigError(f"input_shape must have 1 or 3 channels; got {c}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) == 1 and c == 3:
                object.__setattr__(self, name, v * 3)
            elif len(v) != c:
                raise ConfigError(f"{name} has {len(v)} values but the input has {c} channels")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be positive; got {self.std}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes; "
                "give one name per class or none"
            )
        if self.format_version > SPEC_FORMAT_VERSION:
            raise ConfigError(
                f"Model spec format {self.format_version} is newer than this kdcore understands "
                f"({SPEC_FORMAT_VERSION}); upgrade kdcore"
            )

    @property
    def names(self) -> tuple[str, ...]:
        """Class names, or the class indices as strings when none were given."""
        return self.class_names or tuple(str(i) for i in range(self.num_classes))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) → float (B, C, H, W), scaled to [0, 1] and standardised."""
        x = images.float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["mean"], d["std"], d["class_names"] = list(self.mean), list(self.std), list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"Unknown model spec keys {sorted(unknown)}; expected some of {sorted(known)}")
        if "arch" not in d or "num_classes" not in d:
            raise ConfigError("A model spec needs at least 'arch' and 'num_classes'")
        return cls(**d)

    def replace(self, **changes) -> ModelSpec:
        d = self.to_dict()
        d.update(changes)
        return ModelSpec.from_dict(d)
