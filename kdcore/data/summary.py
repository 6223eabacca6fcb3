"""What an uploaded image set holds, read cheaply, and what cannot be right about an audit's sets.

The New-audit form shows this after each upload, so that a wrong zip is caught before a job exists
(an unlabelled zip in the test-set slot used to be accepted and fail the job a second later).

`summarize(path)`, steps:
1. List the files exactly as the loaders do (`kdcore.data.folders.list_files`: OS junk dropped, a
   single top folder taken as the root), under the same archive guards and limits.
2. Count the images (files with an image extension) per top-level folder; other files are listed
   as skipped ("not an image file").
3. Read the header (size and mode, no pixels) of at most `HEADER_SAMPLE` images spread evenly over
   the set: 60,000 MNIST images cost 200 small reads, not 60,000 decodes. A header that does not
   read is listed as skipped; the others give the image sizes found.
4. Ask the labelled loader's own check (`class_folders`) whether the set reads as labelled; its
   message, when it does not, is the summary's `labelled` field.

`check_uploads(summaries, num_classes, class_names)` applies the rules a job applies
(`kdcore.runs.common.labelled_sets`): labelled sets need class folders, their classes must match the
model's names (or its number of outputs) and each other. What a job would refuse is an error; what
is only suspicious (a labelled set in the unlabelled slot, skipped files) is a warning.

Untrusted input: the dashboard calls this in a sandbox child (`kdcore.sandbox.image_summary`), which
sends the summary back as `to_dict()` and rebuilds it with `from_dict`, which checks every field.
"""

from __future__ import annotations

import io
import statistics
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from PIL import Image

from kdcore import limits
from kdcore.data.folders import (
    PIL_FORMATS,
    UNREADABLE,
    NotRegularFile,
    class_folders,
    image_files,
    is_image,
    list_files,
)
from kdcore.errors import InputError

HEADER_SAMPLE = 200  # image headers read per set
MAX_LISTED = 20  # skipped files named per set
_MODES = {
    "L": "grey",
    "RGB": "colour",
    "RGBA": "colour + alpha",
    "P": "palette",
    "1": "black/white",
    "LA": "grey + alpha",
}
SLOTS = {"unlabeled": "The unlabelled images", "train": "The training set", "test": "The test set"}


@dataclass(frozen=True)
class ImageSetSummary:
    """What `summarize` found in one folder or zip."""

    name: str
    files: int  # files listed (OS junk not counted)
    images: int  # files with an image extension
    folders: tuple[tuple[str, int], ...]  # (top-level folder, images under it), sorted by name
    at_top: int  # images directly at the top level, in no folder
    sizes: tuple[tuple[str, int], ...]  # ("28×28 grey", count) among the headers read, most common first
    headers_read: int
    skipped: tuple[str, ...]  # "name (why)", the first MAX_LISTED
    skipped_total: int
    labelled: str  # "" when the set reads as labelled, else why not (the labelled loader's message)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names a labelled loader would give (sorted folder names); () when not labelled."""
        return () if self.labelled else tuple(name for name, _ in self.folders)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: object) -> ImageSetSummary:
        """Rebuild from `to_dict()`'s value (as the sandbox answers it); InputError for any other shape."""
        ok = isinstance(d, dict) and set(d) == {f.name for f in fields(cls)}
        ok = ok and all(isinstance(d[k], str) for k in ("name", "labelled"))
        ok = ok and all(type(d[k]) is int and d[k] >= 0 for k in ("files", "images", "at_top", "headers_read"))
        ok = ok and type(d["skipped_total"]) is int and isinstance(d["skipped"], list | tuple)
        ok = ok and all(isinstance(s, str) for s in d["skipped"])
        ok = ok and all(_pairs(d[k]) for k in ("folders", "sizes"))
        if not ok:
            raise InputError("The image set could not be summarised safely (the sandboxed reader's answer is broken)")
        pairs = {k: tuple((str(a), int(b)) for a, b in d[k]) for k in ("folders", "sizes")}
        return cls(**{**d, **pairs, "skipped": tuple(d["skipped"])})


def _pairs(v: object) -> bool:
    return isinstance(v, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) and type(p[1]) is int for p in v
    )


def summarize(path: str | Path, sample: int = HEADER_SAMPLE) -> ImageSetSummary:
    """Summarise the folder or zip at `path` (see the module docstring). InputError when it holds no
    image file or cannot be opened (the loaders' own messages)."""
    root = Path(path)
    with list_files(root) as listing:
        images = image_files(listing.files, root, "image files (.png, .jpg, ...)")
        skipped = [f"{f.rel} (not an image file)" for f in listing.files if not is_image(f.rel)]
        per_folder = Counter(f.rel.split("/", 1)[0] for f in images if "/" in f.rel)
        step = max(1, -(-len(images) // max(sample, 1)))  # ceil: at most `sample` headers
        sizes: Counter[str] = Counter()
        read = 0
        for f in images[::step]:
            read += 1
            why = _header(f.read, sizes)
            if why:
                skipped.append(f"{f.rel} ({why})")
        try:
            class_folders(listing, images, None, root)
            labelled = ""
        except InputError as e:
            labelled = str(e)
    return ImageSetSummary(
        name=root.name,
        files=len(listing.files),
        images=len(images),
        folders=tuple(sorted(per_folder.items())),
        at_top=sum("/" not in f.rel for f in images),
        sizes=tuple(sizes.most_common()),
        headers_read=read,
        skipped=tuple(skipped[:MAX_LISTED]),
        skipped_total=len(skipped),
        labelled=labelled,
    )


def summary_dict(path: str) -> dict:
    """`summarize(path).to_dict()`: the sandbox child's entry point (plain values only)."""
    return summarize(path).to_dict()


def _header(read, sizes: Counter) -> str:
    """Count one image's "W×H mode" from its header into `sizes`; return why it is skipped, or ""."""
    try:
        with Image.open(io.BytesIO(read()), formats=PIL_FORMATS) as img:
            if img.width * img.height > limits.current().max_image_pixels:
                return f"{img.width}×{img.height} pixels, over the pixel limit"
            sizes[f"{img.width}×{img.height} {_MODES.get(img.mode, img.mode)}"] += 1
    except UNREADABLE:
        return "not a readable image"
    except NotRegularFile as e:
        return str(e)
    except InputError as e:  # over the file-size limit
        return str(e)
    return ""


@dataclass(frozen=True)
class Finding:
    """One thing the form says about the uploads before submit."""

    level: Literal["error", "warning"]  # an error blocks submit: the job would refuse it
    slot: str  # "unlabeled", "train", "test"
    message: str


def check_uploads(
    sets: dict[str, ImageSetSummary], num_classes: int | None = None, class_names: tuple[str, ...] = ()
) -> list[Finding]:
    """What cannot be right about an audit's image sets (keyed by slot: unlabeled, train, test),
    against the model's `num_classes` and `class_names` (None / (): not known yet)."""
    out: list[Finding] = []
    unl = sets.get("unlabeled")
    if unl is not None and not unl.labelled and not unl.at_top:
        out.append(
            Finding(
                "warning",
                "unlabeled",
                f"{SLOTS['unlabeled']} look labelled: {len(unl.folders)} class folders ({_few(unl.classes)}). "
                "Their labels are not used here; if this is your test set, put it in the test-set slot.",
            )
        )
    names: tuple[str, ...] | None = tuple(class_names) or None
    first = ""
    for slot in ("train", "test"):
        s = sets.get(slot)
        if s is None:
            continue
        if s.labelled:
            out.append(Finding("error", slot, f"{SLOTS[slot]} is not a labelled set (class folders): {s.labelled}"))
            continue
        if names is not None:
            if set(s.classes) != set(names):
                against = f"{SLOTS[first].lower()}'s" if first else "the model's class names"
                out.append(
                    Finding(
                        "error",
                        slot,
                        f"{SLOTS[slot]}'s class folders differ from {against}: " + _diff(s.classes, names),
                    )
                )
        elif num_classes is not None and len(s.classes) != num_classes:
            out.append(
                Finding(
                    "error",
                    slot,
                    f"{SLOTS[slot]} has {len(s.classes)} class folders ({_few(s.classes)}) but the model outputs "
                    f"{num_classes} classes; one folder per output class is needed",
                )
            )
        if names is None:
            names, first = s.classes, slot
    train = sets.get("train")
    if train is not None and not train.labelled:
        for name, n, median in class_count_outliers(dict(train.folders)):
            out.append(Finding("warning", "train", count_note(name, n, median, SLOTS["train"])))
    for slot, s in sets.items():
        if s.skipped_total:
            out.append(
                Finding(
                    "warning",
                    slot,
                    f"{SLOTS.get(slot, slot)}: {s.skipped_total} file(s) will be skipped, "
                    f"e.g. {', '.join(s.skipped[:3])}",
                )
            )
    return out


def _few(items: tuple[str, ...] | list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", … {len(items) - n} more" if len(items) > n else "")


def _diff(got: tuple[str, ...], wanted: tuple[str, ...]) -> str:
    extra = [c for c in got if c not in wanted]
    missing = [c for c in wanted if c not in got]
    parts = [f"folders not among them: {_few(extra)}"] if extra else []
    parts += [f"no folder for: {_few(missing)}"] if missing else []
    return "; ".join(parts)


BULGE = 1.25  # a class this many times the median class's size stands out (a 5 % poison rate into one class
#              of ten adds ~50 %; a 2 % rate ~20 %, which natural imbalance hides, so it is not flagged)
MAX_BULGES = 2  # more classes than this above the cut: the set is imbalanced by nature, and nothing stands out


def class_count_outliers(counts: dict[str, int]) -> list[tuple[str, int, float]]:
    """(class, count, median count) of the classes holding ≥ BULGE × the median class's images, when
    at most MAX_BULGES do: an all-to-one poisoning adds its images to the target class."""
    if len(counts) < 3:
        return []
    median = statistics.median(counts.values())
    big = [(c, n, median) for c, n in sorted(counts.items(), key=lambda kv: -kv[1]) if median and n >= BULGE * median]
    return big if len(big) <= MAX_BULGES else []


def count_note(name: str, n: int, median: float, what: str = "The training set") -> str:
    """A class-count bulge in words."""
    return (
        f"{what}: class {name} holds {n:,} images, {n / median:.1f}× the median class ({median:,.0f}). Attacks "
        "that relabel poisoned images to one target class leave such a bulge; it may also be how the data is."
    )
