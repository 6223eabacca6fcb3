"""The review queue's data, without widgets: a run's ranked candidates (the columnar copy the run
kept at its end, else candidates.csv through `kdcore.candidates`; cached per file version), its
training images (the top candidates' from what the run kept at its end, others from the set rebuilt
once per run directory), class names, thumbnails, the filters and the counts. `app.candidates`
draws them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from kdcore.candidates import FILE_NAME, Candidate, read_candidates
from kdcore.data.imageset import ImageSet
from kdcore.errors import InputError
from kdcore.jobs.review import VERDICTS

PAGE_SIZE = 24
THUMB_PX = 112
VERDICT_FILTERS = ("all", "unreviewed", *VERDICTS)


@dataclass(frozen=True)
class Filters:
    classes: tuple[int, ...] = ()  # labels to keep; empty = all
    predicted: tuple[int, ...] = ()  # teacher predictions to keep; empty = all
    score_range: tuple[float, float] = (-1.0, 1.0)
    only_flagged: bool = True
    verdict: str = "all"  # one of VERDICT_FILTERS


def load_candidates(run_dir: str | Path) -> tuple[Candidate, ...] | None:
    """The run's ranked candidates, or None when the run has no candidates.csv (no training set)."""
    p = Path(run_dir) / FILE_NAME
    if not p.exists():
        return None
    return _read(str(p), p.stat().st_mtime_ns)


@st.cache_resource(max_entries=8, show_spinner=False)
def _read(path: str, mtime_ns: int) -> tuple[Candidate, ...]:
    # mtime_ns is part of the cache key only: a re-run that rewrites the file is re-read. A cached
    # resource, not data: the rows are a tuple of frozen dataclasses, safe to share, and cache_data
    # would pickle 10,000 of them on the first visit and unpickle them on every rerun.
    from kdcore.views import candidates  # heavy: views loads Explain and the model readers

    rows = candidates(Path(path).parent)  # None when the view is missing or older than the CSV
    return read_candidates(path) if rows is None else rows


class TrainImages:
    """The run's training images as the gallery reads them (`images[i]`, `len()`, `class_names`).

    The images of the top candidates, kept at the end of the run (`kdcore.views`), are served from
    there, so the first pages show without decoding the training set; any other index rebuilds the
    whole set once (`full_train_images`)."""

    def __init__(self, run_dir: str, kept: Mapping[int, np.ndarray], n: int, class_names: tuple[str, ...]):
        self.run_dir, self._kept, self._n, self.class_names = run_dir, kept, n, class_names

    @property
    def images(self) -> TrainImages:
        return self

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int):
        if i in self._kept:
            return self._kept[i]
        return full_train_images(self.run_dir).images[i]


@st.cache_resource(max_entries=4, show_spinner=False)
def train_images(run_dir: str) -> ImageSet | TrainImages:
    """The run's training images: what its view kept (`TrainImages`) when it has one, else the whole set."""
    from kdcore.views import read_view, top_images  # heavy: views loads Explain and the model readers

    view = read_view(run_dir)
    if view is None or not view.has_train:
        return full_train_images(run_dir)
    kept = {i: image for i, (image, _) in top_images(run_dir).items()}
    return TrainImages(run_dir, kept, view.n_train, view.train_classes)


@st.cache_resource(max_entries=4, show_spinner="Loading the training images…")
def full_train_images(run_dir: str) -> ImageSet:
    """The run's training set (uint8 (N, C, H, W)), rebuilt from its run directory once per process."""
    from kdcore.runs.rebuild import load_context  # heavy: the engine, only to decode a whole training set

    train = load_context(run_dir, device="cpu").train
    if train is None:
        raise InputError("This audit was run without a training set: there are no training samples to show")
    return train


def class_names(rows: Sequence[Candidate], known: Sequence[str] = ()) -> dict[int, str]:
    """Class id → name, from `known` names, else the CSV's label_name column, else the id."""
    names = {i: n for i, n in enumerate(known)}
    for r in rows:
        if r.label_name:
            names.setdefault(r.label, r.label_name)
    for c in {r.label for r in rows} | {r.teacher_pred for r in rows} | {r.student_pred for r in rows}:
        if c is not None:  # a detector's table has no teacher / student predictions
            names.setdefault(c, str(c))
    return dict(sorted(names.items()))


def thumbnail(image, size: int = THUMB_PX) -> np.ndarray:
    """(C, H, W) uint8 → (H', W', 3) uint8, nearest-neighbour scaled so the long side is about `size`.

    Grey images are repeated into 3 channels, an alpha channel is dropped; an integer scale factor
    keeps every source pixel a crisp block (8×8 digits → 112×112, 28×28 → 112×112).
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.dtype != np.uint8:
        raise InputError(f"Expected a uint8 image (C, H, W); got {a.dtype} {a.shape}")
    a = a[:3] if a.shape[0] >= 3 else np.repeat(a[:1], 3, axis=0)
    h, w = a.shape[1:]
    side = max(h, w)
    if side > 2 * size:  # large images: subsample instead of enlarging
        step = side // size
        a = a[:, ::step, ::step]
    else:
        k = max(1, round(size / side))
        a = a.repeat(k, axis=1).repeat(k, axis=2)
    return np.ascontiguousarray(a.transpose(1, 2, 0))  # (H', W', 3)


def filter_rows(
    rows: Sequence[Candidate],
    classes: Sequence[int] = (),
    predicted: Sequence[int] = (),
    score_range: tuple[float, float] = (-1.0, 1.0),
    only_flagged: bool = True,
    verdict_filter: str = "all",
    verdicts: Mapping[int, str] | None = None,
) -> list[Candidate]:
    """Rows that pass every filter, in their ranked order. Empty `classes`/`predicted` = no constraint.

    `verdicts` maps sample index → verdict string; `verdict_filter` is one of VERDICT_FILTERS.
    """
    if verdict_filter not in VERDICT_FILTERS:
        raise InputError(f"Verdict filter must be one of {VERDICT_FILTERS}; got {verdict_filter!r}")
    verdicts = verdicts or {}
    keep_cls, keep_pred = set(classes), set(predicted)
    lo, hi = score_range
    out = []
    for r in rows:
        if only_flagged and not r.flagged:
            continue
        if keep_cls and r.label not in keep_cls:
            continue
        if keep_pred and r.teacher_pred not in keep_pred:
            continue
        if not lo <= r.score <= hi:
            continue
        v = verdicts.get(r.index)
        if verdict_filter == "unreviewed" and v is not None:
            continue
        if verdict_filter in VERDICTS and v != verdict_filter:
            continue
        out.append(r)
    return out


def review_counts(rows: Sequence[Candidate], verdicts: Mapping[int, str]) -> dict[str, int]:
    """flagged, reviewed and per-verdict counts over the run's candidates."""
    counts = {"flagged": sum(r.flagged for r in rows), "reviewed": len(verdicts)}
    counts.update({v: sum(x == v for x in verdicts.values()) for v in VERDICTS})
    return counts


def ground_truth_summary(rows: Sequence[Candidate], verdicts: Mapping[int, str]) -> dict[str, int] | None:
    """Demo only: how flags and verdicts compare with the known poisons. None without ground truth."""
    if not rows or rows[0].is_poison is None:
        return None
    poison = {r.index for r in rows if r.is_poison}
    flagged = {r.index for r in rows if r.flagged}
    said_poison = {s for s, v in verdicts.items() if v == "poison"}
    said_clean = {s for s, v in verdicts.items() if v == "clean"}
    return {
        "poisons": len(poison),
        "flagged_poisons": len(poison & flagged),
        "poison_verdicts": len(said_poison),
        "poison_verdicts_right": len(said_poison & poison),
        "clean_verdicts": len(said_clean),
        "clean_verdicts_on_poison": len(said_clean & poison),
    }


def page_count(n: int, page_size: int = PAGE_SIZE) -> int:
    return max(1, math.ceil(n / page_size))
