"""Step 2 of seed 000: detoxify the (possibly poisoned) labelled training set.

1. Teacher and student predict every training sample.
2. Poison-data candidates = the samples on which their top-1 classes differ.
3. Each sample gets a suspicion score for ranking in manual review:
   score = p_teacher(ŷ_t) − p_student(ŷ_t), where ŷ_t is the teacher's predicted class
   (T = 1). A trigger makes the teacher confident in the target while the clean student
   is not, so poisons score near 1; ordinary disagreements on ambiguous images score low.
4. With ground-truth poison indices: flagged, precision, recall, false_positives
   (`read_known_poisons` reads them from a user's file, for teaching and evaluation).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from kdcore.candidates import Candidate, rank_order, ranked_rows, sample_name, to_csv
from kdcore.data.folders import posix_name
from kdcore.data.imageset import ImageSet
from kdcore.errors import InputError
from kdcore.models.spec import ModelSpec
from kdcore.train import predict_logits


@dataclass(frozen=True)
class DetoxResult:
    total: int  # samples examined
    flagged: int  # poison-data candidates (teacher ≠ student)
    kept: int  # samples left in the detoxified set
    precision: float | None = None  # None when nothing was flagged or ground truth is unknown
    recall: float | None = None  # None when ground truth is unknown or there are no poisons
    false_positives: int | None = None
    true_positives: int | None = None
    n_poison: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DetoxTable:
    """One row per training sample (tensors of length N), ranked views via `ranked()`."""

    label: torch.Tensor
    teacher_pred: torch.Tensor
    student_pred: torch.Tensor
    teacher_conf: torch.Tensor  # p_teacher(ŷ_t)
    student_conf: torch.Tensor  # p_student(ŷ_t)
    score: torch.Tensor
    flagged: torch.Tensor  # bool
    is_poison: torch.Tensor | None = None  # bool, when ground truth is known
    sources: tuple[str, ...] | None = None
    dataset: str = ""  # the training set's name: names samples that have no file name

    def ranked(self) -> torch.Tensor:
        """Sample indices, flagged first, then by descending suspicion score."""
        return rank_order(self.score, self.flagged)

    def rows(self, class_names: tuple[str, ...] = ()) -> list[Candidate]:
        """The ranked rows of candidates.csv (kdcore.candidates owns the columns and the writing)."""
        return ranked_rows(
            self.score,
            self.flagged,
            self.label,
            sources=self.sources,
            dataset=self.dataset,
            class_names=class_names,
            poison_idx=None if self.is_poison is None else torch.nonzero(self.is_poison).flatten(),
            per_sample=self.predictions(),
        )

    def predictions(self) -> dict[str, torch.Tensor]:
        """teacher_pred, student_pred, teacher_conf, student_conf: the candidate columns beyond the score."""
        return {
            "teacher_pred": self.teacher_pred,
            "student_pred": self.student_pred,
            "teacher_conf": self.teacher_conf,
            "student_conf": self.student_conf,
        }

    def to_csv(self, class_names: tuple[str, ...] = ()) -> str:
        return to_csv(self.rows(class_names))


def detox_metrics(flagged: torch.Tensor, poison_idx: torch.Tensor | None) -> DetoxResult:
    """Counts and, with known poison indices, precision / recall / false positives."""
    n, n_flag = len(flagged), int(flagged.sum())
    if poison_idx is None:
        return DetoxResult(total=n, flagged=n_flag, kept=n - n_flag)
    is_poison = torch.zeros(n, dtype=torch.bool)
    is_poison[poison_idx] = True
    tp = int((flagged & is_poison).sum())
    fp = n_flag - tp
    n_poison = int(is_poison.sum())
    return DetoxResult(
        total=n,
        flagged=n_flag,
        kept=n - n_flag,
        precision=tp / n_flag if n_flag else None,
        recall=tp / n_poison if n_poison else None,
        false_positives=fp,
        true_positives=tp,
        n_poison=n_poison,
    )


def detoxify(
    teacher: nn.Module,
    student: nn.Module,
    spec: ModelSpec,
    train: ImageSet,
    device: torch.device,
    poison_idx: torch.Tensor | None = None,
    student_spec: ModelSpec | None = None,
) -> tuple[DetoxResult, DetoxTable, ImageSet]:
    """Flag teacher–student disagreements. Returns metrics, the per-sample table, and the
    detoxified set (flagged samples removed, order kept)."""
    labels = train.require_labels("Detoxification")
    p_t = predict_logits(teacher, spec, train.images, device).softmax(1)  # (N, K)
    p_s = predict_logits(student, student_spec or spec, train.images, device).softmax(1)
    t_pred, s_pred = p_t.argmax(1), p_s.argmax(1)
    t_conf = p_t.gather(1, t_pred[:, None]).squeeze(1)
    s_conf = p_s.gather(1, t_pred[:, None]).squeeze(1)
    flagged = t_pred != s_pred
    is_poison = None
    if poison_idx is not None:
        is_poison = torch.zeros(len(train), dtype=torch.bool)
        is_poison[poison_idx] = True
    table = DetoxTable(
        labels, t_pred, s_pred, t_conf, s_conf, t_conf - s_conf, flagged, is_poison, train.sources, train.name
    )
    kept = train.subset(torch.nonzero(~flagged).flatten(), name=f"{train.name}-detoxified")
    return detox_metrics(flagged, poison_idx), table, kept


def read_known_poisons(path: str | Path, train: ImageSet) -> torch.Tensor:
    """`--known-poisons FILE`: the training samples known to be poisons (evaluation only), as sorted
    unique indices into `train`.

    The file is text or CSV: cells separated by commas, tabs, semicolons or newlines, each a sample
    index (`12`), a file name as it stands in the training zip (`train/cat/img_001.png`), or without
    the zip's one top folder (`cat/img_001.png`, as in a training folder and candidates.csv's source
    column), or a sample's one name (its name column: `cat/img_001.png · #12`, `#12`); an optional
    first cell `index`, `source` or `name` is a header. A name that is not in the training set, a
    name that fits several samples, or an index out of range is an InputError naming them."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--known-poisons {file}: cannot be read as text ({e.__class__.__name__})") from None
    cells = [c.strip() for c in re.split(r"[,;\t\r\n]", text) if c.strip()]
    if cells and cells[0].lower() in ("index", "source", "name"):
        cells = cells[1:]
    if not cells:
        raise InputError(f"--known-poisons {file} lists no samples; expected indices or file names, one a line")
    names = _sample_names(train)
    n = len(train)
    idx, unknown, out_of_range, ambiguous = [], [], [], {}
    for cell in cells:
        # As written, else as the loaders write zip names (`./train/cat/1.png`, `train\cat\1.png` → `train/cat/1.png`).
        key = cell if cell in names else posix_name(cell.removeprefix("./"))
        digits = cell[1:] if cell.startswith("#") else cell
        if digits.isdigit() and key not in names:
            i = int(digits)
            (idx if i < n else out_of_range).append(i)
        elif len(names.get(key, ())) == 1:
            idx.extend(names[key])
        elif key in names:
            ambiguous[cell] = sorted(names[key])
        else:
            unknown.append(cell)
    if ambiguous:
        (cell, hits), *_ = ambiguous.items()
        fits = ", ".join(repr(sample_name(i, train.sources[i], train.name)) for i in hits[:3])  # type: ignore[index]
        raise InputError(
            f"--known-poisons {file}: {len(ambiguous)} name(s) fit several training samples: {_few(list(ambiguous))}; "
            f"e.g. {cell!r} fits {fits}. Give those samples by index or by their one name "
            "(candidates.csv's name column, as just listed)"
        )
    if unknown:
        example = _example_names(train)
        raise InputError(
            f"--known-poisons {file}: {len(unknown)} name(s) not in the training set, e.g. {unknown[0]!r}; "
            f"use indices or the file names as they stand in the training {example}"
        )
    if out_of_range:
        raise InputError(
            f"--known-poisons {file}: index {out_of_range[0]} is out of range "
            f"(the training set has {n} samples, 0..{n - 1})"
        )
    return torch.tensor(sorted(set(idx)), dtype=torch.long)


def _sample_names(train: ImageSet) -> dict[str, set[int]]:
    """Every name a known-poisons file may give each sample → the samples it fits: the file name
    (`cat/1.png`), the same under the zip's top folder (`train/cat/1.png`) and the one name."""
    names: dict[str, set[int]] = {}
    for i, source in enumerate(train.sources or [""] * len(train)):
        keys = {sample_name(i, source, train.name)}
        if source:
            keys |= {source, f"{train.top}/{source}"} if train.top else {source}
        for key in keys:
            names.setdefault(key, set()).add(i)
    return names


def _example_names(train: ImageSet) -> str:
    """How the training set's file names look, for a message: "zip ('train/cat/1.png' or 'cat/1.png')"."""
    if not train.sources:
        return "set (it has no file names: use indices)"
    first = train.sources[0]
    return f"zip ({f'{train.top}/{first}'!r} or {first!r})" if train.top else f"folder or zip ({first!r})"


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(map(repr, items[:n])) + (f", … {len(items) - n} more" if len(items) > n else "")
