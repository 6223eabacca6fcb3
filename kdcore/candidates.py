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

One name per sample: `sample_name` is the only place a training sample's name is built (the file
it came from plus its index, `1/train_02151.png · #1324`; built-in data without file names use the
dataset's name, `cifar10-train · #1324`). The CSV's `name` column, the review gallery, Explain's
picker and the HTML report all print it, so one sample reads the same everywhere. `count_of` is
the one way a count of samples is printed with its scale ("2,141 of 10,000 (21 %)"; `share_of`
gives the part after the count, for a display that shows the count large and its scale under it).

Columns: `to_columns` / `from_columns` hold the same rows as one numpy array per `Candidate` field,
the copy a finished run keeps for the dashboard (`kdcore.views`), which reads 10,000 rows in a
tenth of the CSV's time. They carry exactly what the reader returns: text fields as their distinct
values plus one code per row, and a `<field>/none` mask where a field may be None.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from kdcore.errors import InputError
from kdcore.io import atomic_write_text

FILE_NAME = "candidates.csv"
COLUMNS = (
    "rank",
    "index",
    "name",
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
TEXT = ("name", "source", "label_name")  # user-controlled strings: escaped against formula injection
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_INDEX_SEP = " · #"


def sample_name(index: int, source: str = "", dataset: str = "") -> str:
    """The one name of training sample `index`: `<file> · #<index>` when its file name is known,
    else `<dataset> · #<index>`, else `#<index>`."""
    where = source or dataset
    return f"{where}{_INDEX_SEP}{index}" if where else f"#{index}"


def _dataset_of(name: str, index: int, source: str) -> str:
    """The dataset part of a `sample_name` without a file name (the inverse, for reading the CSV)."""
    suffix = f"{_INDEX_SEP}{index}"
    return name[: -len(suffix)] if not source and name.endswith(suffix) else ""


def share_of(n: int, total: int) -> str:
    """The scale of a count: "of 10,000 (21 %)"; "of 10,000 (0.03 %)"; "of 0" (no share of nothing)."""
    if total <= 0:
        return f"of {total:,}"
    p = 100 * n / total
    if p == 0 or p >= 10:
        share = f"{p:.0f}"
    elif p >= 1:
        share = f"{p:.1f}"
    else:
        share = f"{p:.2g}"
    return f"of {total:,} ({share} %)"


def count_of(n: int, total: int) -> str:
    """A count with its scale: "2,141 of 10,000 (21 %)"."""
    return f"{n:,} {share_of(n, total)}"


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
    dataset: str = ""  # the training set's name: names a sample that has no file name (built-in data)

    @property
    def name(self) -> str:
        """The sample's one name (`sample_name`), as every view and the CSV print it."""
        return sample_name(self.index, self.source, self.dataset)


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
    dataset: str = "",
    class_names: Sequence[str] = (),
    poison_idx: torch.Tensor | None = None,
    per_sample: dict[str, torch.Tensor] | None = None,
) -> list[Candidate]:
    """The ranked rows of N samples: `score` (N,) float, `flagged` (N,) bool, `labels` (N,) int.

    `per_sample` may add teacher_pred / student_pred / teacher_conf / student_conf tensors (N,);
    `dataset` (the training set's name) names the samples when `sources` has no file names."""
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
                dataset=dataset,
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


def _row(r: dict[str, str], truth: bool) -> Candidate:
    index, source = int(r["index"]), unescape_cell(r.get("source") or "")
    return Candidate(
        rank=int(r["rank"]),
        index=index,
        source=source,
        label=int(r["label"]),
        label_name=unescape_cell(r.get("label_name") or ""),
        teacher_pred=_int(r.get("teacher_pred") or ""),
        student_pred=_int(r.get("student_pred") or ""),
        teacher_conf=_float(r.get("teacher_conf") or ""),
        student_conf=_float(r.get("student_conf") or ""),
        score=float(r["score"]),
        flagged=r["flagged"] == "1",
        is_poison=(r["is_poison"] == "1") if truth else None,
        dataset=_dataset_of(unescape_cell(r.get("name") or ""), index, source),
    )


def parse_candidates(text: str, where: str = FILE_NAME) -> tuple[Candidate, ...]:
    """CSV text → rows (the inverse of `to_csv`; files from older versions read too)."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"{where} is missing column(s) {missing}; was it written by kdcore?")
    truth = "is_poison" in header
    try:
        return tuple(_row(r, truth) for r in reader)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where} line {reader.line_num} cannot be read ({e}); re-run the audit") from e


def read_candidates(path: str | os.PathLike) -> tuple[Candidate, ...]:
    """The ranked rows of a candidates.csv (InputError when it is not one)."""
    p = Path(path)
    return parse_candidates(p.read_text(encoding="utf-8"), str(p))


def _kind(field) -> str:
    # the annotation's first type ("int | None" → "int"); a string under `from __future__ import annotations`
    return field.type.split(" | ")[0]


_FILL = {"int": 0, "float": 0.0, "bool": False, "str": ""}  # stands in for None under the mask


def to_columns(rows: Sequence[Candidate]) -> dict[str, np.ndarray]:
    """The rows as one array per `Candidate` field (see the module docstring); `from_columns` inverts it."""
    arrays: dict[str, np.ndarray] = {}
    for f in fields(Candidate):
        kind, values = _kind(f), [getattr(r, f.name) for r in rows]
        if f.type.endswith(" | None"):  # an optional field always carries its mask
            arrays[f"{f.name}/none"] = np.array([v is None for v in values], dtype=bool)
            values = [_FILL[kind] if v is None else v for v in values]
        if kind == "str":
            distinct, codes = np.unique(np.array(values, dtype=str), return_inverse=True)
            arrays[f"{f.name}/values"], arrays[f"{f.name}/codes"] = distinct, codes.astype(np.int64)
        else:
            arrays[f.name] = np.array(values, dtype={"int": np.int64, "float": np.float64, "bool": bool}[kind])
    return arrays


def from_columns(arrays: Mapping[str, np.ndarray]) -> tuple[Candidate, ...] | None:
    """The rows `to_columns` wrote, of the same types `read_candidates` returns; None when a field
    has no column (arrays written before the field existed: read the CSV instead)."""
    cols = []
    for f in fields(Candidate):
        if _kind(f) == "str":
            if f"{f.name}/codes" not in arrays:
                return None
            distinct = arrays[f"{f.name}/values"].tolist()
            col = [distinct[c] for c in arrays[f"{f.name}/codes"].tolist()]
        elif f.name in arrays:
            col = arrays[f.name].tolist()  # Python ints, floats and bools, not numpy scalars
        else:
            return None
        if f"{f.name}/none" in arrays:
            col = [None if n else v for v, n in zip(col, arrays[f"{f.name}/none"].tolist(), strict=True)]
        cols.append(col)
    return tuple(map(Candidate, *cols))


def flags_of(rows: Sequence[Candidate]) -> dict[int, bool]:
    """Training-sample index → flagged."""
    return {r.index: r.flagged for r in rows}
