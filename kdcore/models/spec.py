"""ModelSpec: everything needed to rebuild a model and feed it images.

A spec travels with every saved model (a `.json` beside the `.safetensors`, and the same
fields in the safetensors metadata), so a checkpoint can be rebuilt without guessing. Specs
also come from uploaded files and the dashboard, so every field is checked for its type and
range on construction (ConfigError saying what was got and what is expected):
arch a name; num_classes a whole number from 2 to `max_num_classes`; input_shape three whole
numbers with C = 1 or 3 and H × W at most `max_input_pixels`; mean/std finite numbers; class
names strings; extra a flat mapping of option names to JSON scalars or lists of them; source a
file name and source_sha256 its hex digest (both or neither); layers a mapping from a layer role
(`LAYER_ROLES`) to a module name.
`from_json` also refuses JSON nested deeper than `max_nesting` (limits from
`kdcore.limits.current()`).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields

import torch

from kdcore import limits
from kdcore.errors import ConfigError

SPEC_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """Architecture name, classes and input format of a classifier.

    input_shape: (C, H, W) the model expects; images are resized/converted to it.
    mean, std:   per-channel normalisation applied to images scaled to [0, 1].
    source:      for architectures defined by a file rather than a name (`onnx`, `pt2`,
                 `file:<Class>`): that file. A relative path is relative to the model file the
                 spec travels with; `save_model` copies the source beside what it saves.
    source_sha256: the source file's SHA-256; building refuses a source whose content changed.
    layers:      the user's layer choice per role, e.g. {"last_conv": "features.3"}
                 (`kdcore.models.layers.choose_layer` takes it over its own choice).
    """

    arch: str
    num_classes: int
    input_shape: tuple[int, int, int] = (1, 28, 28)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    class_names: tuple[str, ...] = ()
    format_version: int = SPEC_FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # architecture options (e.g. torchvision kwargs)
    source: str = ""
    source_sha256: str = ""
    layers: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        lim = limits.current()
        if not isinstance(self.arch, str) or not self.arch.strip():
            got = _show(self.arch)
            raise ConfigError(f"arch must be an architecture name like 'paper-cnn' or 'tv:resnet18'; got {got}")
        object.__setattr__(self, "num_classes", _whole(self.num_classes, "num_classes"))
        shape = _seq(self.input_shape, "input_shape")
        object.__setattr__(self, "input_shape", tuple(_whole(v, "input_shape") for v in shape))
        object.__setattr__(self, "mean", tuple(_finite(v, "mean") for v in _seq(self.mean, "mean")))
        object.__setattr__(self, "std", tuple(_finite(v, "std") for v in _seq(self.std, "std")))
        object.__setattr__(self, "class_names", tuple(_name(v) for v in _seq(self.class_names, "class_names")))
        object.__setattr__(self, "format_version", _whole(self.format_version, "format_version"))
        _check_extra(self.extra)
        _check_source(self.source, self.source_sha256)
        object.__setattr__(self, "layers", _checked_layers(self.layers))
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2; got {self.num_classes}")
        if self.num_classes > lim.max_num_classes:
            raise ConfigError(
                f"num_classes is {self.num_classes:,}; at most {lim.max_num_classes:,} classes are accepted "
                "(max_num_classes)"
            )
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ConfigError(f"input_shape must be (C, H, W) with positive sizes; got {self.input_shape}")
        if self.input_shape[1] * self.input_shape[2] > lim.max_input_pixels:
            raise ConfigError(
                f"input_shape {self.input_shape} has {self.input_shape[1] * self.input_shape[2]:,} pixels per image; "
                f"at most {lim.max_input_pixels:,} (max_input_pixels), e.g. (3, 224, 224)"
            )
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
        for name in ("source", "source_sha256", "layers"):  # optional: older kdcore versions read the rest
            if not d[name]:
                del d[name]
        d["mean"], d["std"], d["class_names"] = list(self.mean), list(self.std), list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """A spec from JSON text (a file, safetensors metadata, the dashboard); raises ConfigError."""
        if not isinstance(text, str):
            raise ConfigError(f"A model spec must be JSON text; got {type(text).__name__}")
        max_depth = limits.current().max_nesting
        try:
            d = json.loads(text)  # the C parser raises RecursionError past ~1000 levels, it never crashes
        except RecursionError as e:
            raise ConfigError(f"the JSON is nested more than {max_depth} levels deep (max_nesting)") from e
        except ValueError as e:  # JSONDecodeError, or an integer of more than 4300 digits
            raise ConfigError(f"not valid JSON ({str(e)[:200]})") from e
        if json_depth(d) > max_depth:
            raise ConfigError(f"the JSON is nested more than {max_depth} levels deep (max_nesting)")
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        if not isinstance(d, dict):
            raise ConfigError(f"A model spec must be a JSON object; got {type(d).__name__}")
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


def json_depth(value: object) -> int:
    """How deeply lists and dicts nest in a parsed JSON value ([] is 1, [[1]] is 2); iterative."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, depth)
            todo.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _show(v: object) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


def _seq(v: object, name: str) -> tuple | list:
    if not isinstance(v, (list, tuple)):
        raise ConfigError(f"{name} must be a list; got {_show(v)}")
    return v


def _whole(v: object, name: str) -> int:
    """An int, or a float with an integer value (JSON writes 10.0); never a bool or 10.5."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    what = "whole numbers" if name == "input_shape" else "a whole number"
    raise ConfigError(f"{name} must be {what}; got {_show(v)}")


def _finite(v: object, name: str) -> float:
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v := _as_float(v)):
        return v
    raise ConfigError(f"{name} must be finite numbers; got {_show(v)}")


def _as_float(v: numbers.Real) -> float:
    try:
        return float(v)
    except OverflowError:  # an int past 1.8e308
        return math.inf


def _name(v: object) -> str:
    if isinstance(v, str) or (isinstance(v, numbers.Integral) and not isinstance(v, bool)):
        return str(v)
    raise ConfigError(f"class_names must be strings; got {_show(v)}")


def _check_extra(extra: object) -> None:
    """Architecture options: names to JSON scalars or flat lists of them (torchvision kwargs)."""
    if not isinstance(extra, dict):
        raise ConfigError(f"extra must be a mapping of option names to values; got {_show(extra)}")
    scalar = (bool, int, float, str, type(None))
    for k, v in extra.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise ConfigError(f"extra option names must be identifiers; got {_show(k)}")
        if not (isinstance(v, scalar) or (isinstance(v, (list, tuple)) and all(isinstance(x, scalar) for x in v))):
            raise ConfigError(f"extra option {k!r} must be a number, string, bool or a flat list; got {_show(v)}")


LAYER_ROLES = ("last_conv", "penultimate")  # the roles a user may choose by name (kdcore.models.layers)


def _check_source(source: object, digest: object) -> None:
    if not isinstance(source, str) or not isinstance(digest, str):
        raise ConfigError(f"source and source_sha256 must be strings; got {_show(source)}, {_show(digest)}")
    if bool(source) != bool(digest):
        raise ConfigError("source and source_sha256 go together: give both (the file and its SHA-256) or neither")
    if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
        raise ConfigError(f"source_sha256 must be 64 lowercase hex digits; got {_show(digest)}")


def _checked_layers(layers: object) -> dict:
    if not isinstance(layers, dict):
        raise ConfigError(f"layers must map a layer role to a module name; got {_show(layers)}")
    for role, name in layers.items():
        if role not in LAYER_ROLES:
            raise ConfigError(f"layers: unknown role {role!r}; the roles are {list(LAYER_ROLES)}")
        if not isinstance(name, str) or not name or len(name) > 500:
            raise ConfigError(f"layers[{role!r}] must be a module name like 'features.3'; got {_show(name)}")
    return dict(layers)
