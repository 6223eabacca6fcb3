"""Triggers: the attacker's mark as a value that serialises (for the UI, the job store, the CLI).

A trigger knows its pattern (`stamp`), its target class and, for source-specific attacks
(seed 000's GTSRB setup), the one source class it should flip; `poison_test` gives the triggered
test images that asr and poison_acc are measured on (stamped, or a `TriggeredSet`'s own). `Trigger.from_dict` rebuilds
any registered trigger from `to_dict()` output; `describe` says it in a person's words (`kdcore.words`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import torch

from kdcore.data.imageset import ImageSet
from kdcore.errors import ConfigError
from kdcore.words import Names, trigger_words

TRIGGERS: dict[str, type[Trigger]] = {}


@dataclass(frozen=True)
class Trigger:
    """Base class: subclasses set `kind` and implement `stamp`."""

    target: int = 0
    source: int | None = None  # None: all-to-one (every non-target class flips)
    kind: ClassVar[str] = ""
    positional: ClassVar[str] = ""  # the field a bare value fills in the short form (`recovered:RUN_DIR`)
    aliases: ClassVar[dict[str, str]] = {}  # other names of fields, e.g. {"class": "target"}
    stamps: ClassVar[bool] = True  # False: it cannot put itself on other images (a set of triggered photos)

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        if cls.kind:
            TRIGGERS[cls.kind] = cls

    def __post_init__(self) -> None:
        for name in ("target", "source"):
            v = getattr(self, name)
            if not (v is None and name == "source") and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"Trigger {name} must be a whole class index; got {v!r}")
        if self.target < 0:
            raise ConfigError(f"Trigger target must be a class index ≥ 0; got {self.target}")
        if self.source is not None and self.source == self.target:
            raise ConfigError(f"Trigger source and target are both {self.target}; they must differ")

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) → a new uint8 tensor with the trigger applied."""
        raise NotImplementedError

    def victims(self, labels: torch.Tensor) -> torch.Tensor:
        """Bool mask of samples the attack should flip to the target (Eq.: asr's denominator)."""
        mask = labels != self.target
        if self.source is not None:
            mask &= labels == self.source
        return mask

    def poison_test(self, test: ImageSet) -> tuple[ImageSet, torch.Tensor]:
        """Seed 000's D^p_test: the trigger stamped on every test image whose true class is not the
        target, labels kept, and the mask (over those images) of the victims. A trigger that brings
        its own triggered images (`TriggeredSet`) answers with them instead; evaluation reads both
        the same way, so asr and poison_acc have one definition."""
        labels = test.require_labels("A poison test set")
        keep = torch.nonzero(labels != self.target).flatten()
        kept = test.subset(keep)
        stamped = ImageSet(self.stamp(kept.images), kept.labels, kept.class_names, kept.sources, test.name + "-poison")
        return stamped, self.victims(kept.labels)

    def check_input(self, input_shape: tuple[int, ...]) -> None:
        """Raise ConfigError now if the trigger cannot be put on images of `input_shape` (C, H, W)
        (a patch that does not fit), rather than at evaluation after the training stages."""
        self.stamp(torch.zeros((1, *input_shape), dtype=torch.uint8))

    def notes(self) -> list[str]:
        """What a report should say about how this trigger was measured (none for a stamping trigger)."""
        return []

    def check_classes(self, num_classes: int) -> None:
        for name, c in (("target", self.target), ("source", self.source)):
            if c is not None and c >= num_classes:
                raise ConfigError(f"Trigger {name} class {c} does not exist: the model has {num_classes} classes")

    def to_dict(self) -> dict:
        d = {"kind": self.kind, **asdict(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def describe(self, class_names: Names = ()) -> str:
        """The trigger in words (`trigger_words`), e.g. "BadNets square 3×3 px, white, at the bottom-right
        1 px from the edges → target class Sneaker (7)"."""
        return trigger_words(self.to_dict(), class_names)

    @staticmethod
    def from_dict(d: dict) -> Trigger:
        d = dict(d)
        kind = d.pop("kind", None)
        if kind not in TRIGGERS:
            raise ConfigError(f"Unknown trigger kind {kind!r}; expected one of {sorted(TRIGGERS)}")
        cls = TRIGGERS[kind]
        for alias, name in cls.aliases.items():
            if alias in d and name not in d:
                d[name] = d.pop(alias)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"Unknown keys {sorted(unknown)} for trigger {kind!r}; expected some of {sorted(known)}")
        typed = {}
        for f in fields(cls):
            if f.name in d:
                v = d[f.name]
                typed[f.name] = tuple(v) if isinstance(v, list) else v
        try:
            return cls(**typed)
        except TypeError as e:
            raise ConfigError(f"Bad trigger values {d}: {e}") from e


def _coerce(text: str):
    t = text.strip()
    if "/" in t:
        return [_coerce(p) for p in t.split("/")]
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return None if t.lower() == "none" else t


def parse_trigger(text: str) -> Trigger:
    """A trigger from a JSON object, a JSON file path, or the short form
    `badnets:target=7,size=3,location=bottom-right,color=255/255/0` (a file path with a comma in it
    needs the JSON form: `patch:image=p.png,target=7` is split at commas). A kind may take one bare
    value for its `positional` field and other names for fields (`recovered:RUN_DIR,class=7`)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return Trigger.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"Trigger JSON is not valid: {e}") from e
    if text.endswith(".json"):
        p = Path(text)
        if not p.exists():
            raise ConfigError(f"Trigger file {text} does not exist")
        return parse_trigger(p.read_text())
    kind, _, rest = text.partition(":")
    d: dict = {"kind": kind.strip()}
    # Text settings (file paths, locations) are kept as written: a path's "/" is not a list.
    cls = TRIGGERS.get(d["kind"])
    texts = {f.name for f in fields(cls) if f.type in ("str", str)} if cls else set()
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq and cls is not None and cls.positional and cls.positional not in d:
            key, eq, value = cls.positional, "=", part
        if not eq:
            raise ConfigError(f"Trigger option {part!r} should look like key=value")
        key = key.strip()
        key = cls.aliases.get(key, key) if cls else key
        d[key] = value.strip() if key in texts else _coerce(value)
    return Trigger.from_dict(d)
