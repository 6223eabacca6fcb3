"""candidates.csv: the one table of ranked training samples, its one writer and its one reader.

Both the core method's detox step (teacher/student disagreements, kdcore.detox) and a detector
(kdcore.defenses) write it: one row per training sample, flagged first, then by descending
suspicion score. Columns a writer does not know (a detector has no teacher/student predictions)
stay empty; `is_poison` is there only when the ground truth is known (built-in data).

Security: class folder names and file names come from uploaded archives, and the CSV is a
download that people open in spreadsheets. A text cell that starts with `=`, `+`, `-`, `@`, a tab
or a carriage return would run as a formula there, so it is written with a leading `'` (a cell
that already starts with `'` gets a second one, so reading undoes the escape exactly). Numbers
are written as numbers and never escaped (a negative score stays `-0.12345`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kdcore.errors import InputError
from kdcore.io import atomic_write_text

FILE_NAME = "candidates.csv"
COLUMNS = (
    "rank",
    "index",
    "source",
    "label",
    "label_name",
    "teacher_pred",
    "student_pred",
    "teacher_conf",
    "student_conf",
    "score",
    "flagged",
    "is_poison",
)
REQUIRED = ("rank", "index", "label", "score", "flagged")  # what every writer fills in
TEXT = ("source", "label_name")  # user-controlled strings: escaped against formula injection
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Candidate:
    """One training sample: its place in the ranking, its label, predictions and suspicion score."""

    rank: int
    index: int  # position in the run's training set
    source: str  # file name inside the training folder/zip ('' for built-in data)
    label: int
    label_name: str
    teacher_pred: int | None  # None: the writer had no teacher/student predictions (a detector)
    student_pred: int | None
    teacher_conf: float | None  # p_teacher(ŷ_t)
    student_conf: float | None  # p_student(ŷ_t)
    score: float  # higher = more suspicious (core method: teacher_conf − student_conf)
    flagged: bool
    is_poison: bool | None = None  # ground truth, only for built-in data

    @property
    def name(self) -> str:
        return self.source or f"#{self.index}"


def escape_cell(text: str) -> str:
    """A user-controlled string made safe for spreadsheets (see the module docstring)."""
    return "'" + text if text.startswith((*_FORMULA_START, "'")) else text


def unescape_cell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def rank_order(score: torch.Tensor, flagged: torch.Tensor) -> torch.Tensor:
    """Sample indices, flagged first, then by descending score (ties keep sample order)."""
    return torch.argsort(score + 2.0 * flagged.float(), descending=True, stable=True)


def ranked_rows(
    score: torch.Tensor,
    flagged: torch.Tensor,
    labels: torch.Tensor,
    *,
    sources: Sequence[str] | None = None,
    class_names: Sequence[str] = (),
    poison_idx: torch.Tensor | None = None,
    per_sample: dict[str, torch.Tensor] | None = None,
) -> list[Candidate]:
    """The ranked rows of N samples: `score` (N,) float, `flagged` (N,) bool, `labels` (N,) int.

    `per_sample` may add teacher_pred / student_pred / teacher_conf / student_conf tensors (N,)."""
    extra = per_sample or {}
    unknown = set(extra) - {"teacher_pred", "student_pred", "teacher_conf", "student_conf"}
    if unknown:
        raise ValueError(f"Unknown per-sample column(s) {sorted(unknown)}")
    is_poison = None
    if poison_idx is not None:
        is_poison = torch.zeros(len(score), dtype=torch.bool)
        is_poison[poison_idx] = True

    def get(name: str, i: int, cast):
        return cast(extra[name][i]) if name in extra else None

    rows = []
    for rank, i in enumerate(rank_order(score, flagged).tolist(), start=1):
        label = int(labels[i])
        rows.append(
            Candidate(
                rank=rank,
                index=i,
                source=sources[i] if sources else "",
                label=label,
                label_name=class_names[label] if label < len(class_names) else "",
                teacher_pred=get("teacher_pred", i, int),
                student_pred=get("student_pred", i, int),
                teacher_conf=get("teacher_conf", i, float),
                student_conf=get("student_conf", i, float),
                score=float(score[i]),
                flagged=bool(flagged[i]),
                is_poison=None if is_poison is None else bool(is_poison[i]),
            )
        )
    return rows


def _cell(name: str, v) -> str | int:
    if v is None:
        return ""
    if name in TEXT:
        return escape_cell(str(v))
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return f"{v:.5f}"
    return v


def to_csv(rows: Sequence[Candidate]) -> str:
    """The table as CSV text: COLUMNS (without is_poison when no row has ground truth)."""
    cols = [c for c in COLUMNS if c != "is_poison" or any(r.is_poison is not None for r in rows)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow([_cell(c, getattr(r, c)) for c in cols])
    return buf.getvalue()


def write_candidates(path: str | os.PathLike, rows: Sequence[Candidate]) -> Path:
    """Write the table atomically (a crash leaves the old file or none, never half a table)."""
    return atomic_write_text(path, to_csv(rows))


def _int(v: str) -> int | None:
    return int(v) if v not in ("", None) else None


def _float(v: str) -> float | None:
    return float(v) if v not in ("", None) else None


def parse_candidates(text: str, where: str = FILE_NAME) -> tuple[Candidate, ...]:
    """CSV text → rows (the inverse of `to_csv`; files from older versions read too)."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"{where} is missing column(s) {missing}; was it written by kdcore?")
    truth = "is_poison" in header
    try:
        return tuple(
            Candidate(
                rank=int(r["rank"]),
                index=int(r["index"]),
                source=unescape_cell(r.get("source") or ""),
                label=int(r["label"]),
                label_name=unescape_cell(r.get("label_name") or ""),
                teacher_pred=_int(r.get("teacher_pred") or ""),
                student_pred=_int(r.get("student_pred") or ""),
                teacher_conf=_float(r.get("teacher_conf") or ""),
                student_conf=_float(r.get("student_conf") or ""),
                score=float(r["score"]),
                flagged=r["flagged"] == "1",
                is_poison=(r["is_poison"] == "1") if truth else None,
            )
            for r in reader
        )
    except (TypeError, ValueError) as e:
        raise InputError(f"{where} line {reader.line_num} cannot be read ({e}); re-run the audit") from e


def read_candidates(path: str | os.PathLike) -> tuple[Candidate, ...]:
    """The ranked rows of a candidates.csv (InputError when it is not one)."""
    p = Path(path)
    return parse_candidates(p.read_text(encoding="utf-8"), str(p))


def flags_of(rows: Sequence[Candidate]) -> dict[int, bool]:
    """Training-sample index → flagged."""
    return {r.index: r.flagged for r in rows}
