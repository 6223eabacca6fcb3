"""A triggered test set: images that already carry the trigger, for attacks no formula describes
(physical stickers, filters, semantic triggers), measured like any other trigger.

    kdcore audit ... --test clean.zip --triggered-test trig.zip --target 7
    --trigger triggered:path=trig.zip,target=7[,source=S]      (the same, where --trigger is taken)

It is a `Trigger` whose `poison_test` answers with its own images instead of stamping the test set,
so `kdcore.evaluate.evaluate_model` computes asr and poison_acc by the one code path of every
trigger (asr = victims predicted as the target; poison_acc = accuracy on the true labels):
- labelled (every image in a folder named for its true class, one of the model's classes, any
  subset of them): images of the target class are left out, as from a stamped D^p_test; victims
  are the rest (or only the source class when `source` is given); poison_acc is measured;
- unlabelled (every image at the top level): with `source` given, every image is taken to be of
  that class (then as labelled); without it every image counts as a victim and poison_acc cannot
  be measured. `notes()` says which case was measured, for the report.
A .zip whose images all sit in one folder is read as that folder's content (as every kdcore loader
reads a zip), so a one-class zip is unlabelled: give `source`, or a folder on disk.
The images are the user's, so they are decoded in the sandbox at the test set's input size
(`kdcore.sandbox.load_unlabeled`), once per size. It cannot `stamp` other images: it cannot poison
a training set or be drawn on images in Explain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kdcore import sandbox
from kdcore.data.imageset import ImageSet
from kdcore.errors import ConfigError, InputError
from kdcore.triggers.base import Trigger


@dataclass(frozen=True)
class TriggeredSet(Trigger):
    path: str = ""  # folder or .zip of triggered images: <class>/<image> (labelled) or <image>
    kind = "triggered"
    stamps = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise ConfigError("A triggered test set needs path=FOLDER_OR_ZIP (--triggered-test)")
        p = Path(self.path).expanduser().resolve()
        if not p.exists():
            raise ConfigError(f"The triggered test set {self.path} does not exist; give a folder or a .zip of images")
        object.__setattr__(self, "path", str(p))
        object.__setattr__(self, "_loaded", {})  # (input shape, class names) → (set, victims, notes)

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        raise ConfigError(
            "A triggered test set brings its own images and cannot put its trigger on others: it measures "
            "asr and poison_acc only (it cannot poison a training set or be shown on Explain)"
        )

    def check_input(self, input_shape: tuple[int, ...]) -> None:
        """Nothing to check before the test set is known: its images are read at the test's size."""

    def poison_test(self, test: ImageSet) -> tuple[ImageSet, torch.Tensor]:
        key = (test.shape, test.class_names)
        if key not in self._loaded:
            self._loaded[key] = self._load(test.shape, test.class_names)
        data, victims, _ = self._loaded[key]
        return data, victims

    def notes(self) -> list[str]:
        return [note for _, _, notes in self._loaded.values() for note in notes][:3]

    def _load(self, shape: tuple[int, int, int], names: tuple[str, ...]) -> tuple[ImageSet, torch.Tensor, list[str]]:
        data = sandbox.load_unlabeled(self.path, shape, name=Path(self.path).name)
        labels = self._labels(data.sources or (), names)
        what = f"Triggered test set {data.name}: {len(data)} images"
        if data.skipped:
            what += f" ({len(data.skipped)} unreadable files skipped, e.g. {data.skipped[0]!r})"
        if labels is None:
            note = f"{what}, unlabelled: every image counts as a victim (asr); poison_acc is not measurable."
            return data, torch.ones(len(data), dtype=torch.bool), [note]
        data = ImageSet(data.images, labels, names, data.sources, data.name, data.skipped)
        keep = torch.nonzero(labels != self.target).flatten()
        kept = data.subset(keep)
        dropped = len(data) - len(kept)
        by_folder = any("/" in src for src in data.sources or ())
        how = "labelled by folder" if by_folder else f"unlabelled, all taken as the source class {self.source}"
        note = f"{what}, {how}"
        if dropped:
            note += f"; {dropped} of the target class left out (they cannot show a flip)"
        if not len(kept):
            raise InputError(f"{what}, all of the target class {self.target}: there is nothing to measure asr on")
        return kept, self.victims(kept.labels), [note + "."]

    def _labels(self, sources: tuple[str, ...], names: tuple[str, ...]) -> torch.Tensor | None:
        """True class per image from its top folder; None when unlabelled (and no source given)."""
        folders = [s.split("/", 1)[0] if "/" in s else None for s in sources]
        if all(f is None for f in folders):
            return None if self.source is None else torch.full((len(sources),), self.source, dtype=torch.int64)
        if any(f is None for f in folders):
            raise InputError(
                f"The triggered test set {Path(self.path).name} mixes images at the top level with images in "
                "folders; put every image in the folder of its true class, or all of them at the top level"
            )
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({f for f in folders if f not in index})
        if unknown:
            raise InputError(
                f"Folder(s) {unknown[:10]} of the triggered test set {Path(self.path).name} are not classes of the "
                f"model {list(names)[:20]}; name each folder for the true class of its images"
            )
        return torch.tensor([index[f] for f in folders], dtype=torch.int64)
