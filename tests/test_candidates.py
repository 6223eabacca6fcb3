"""kdcore.candidates: one schema for both writers (the core method's detox, a detector through the
defend run), atomic writing, typed reading, and escaping of user-controlled strings against
spreadsheet formula injection while every reader still matches samples by index."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import pytest
import torch

from kdcore.candidates import (
    COLUMNS,
    FILE_NAME,
    Candidate,
    count_of,
    escape_cell,
    from_columns,
    parse_candidates,
    rank_order,
    ranked_rows,
    read_candidates,
    sample_name,
    share_of,
    to_columns,
    to_csv,
    unescape_cell,
    write_candidates,
)
from kdcore.data.imageset import ImageSet
from kdcore.defenses.base import DefenseInputs, DefenseResult
from kdcore.detox import DetoxTable, read_known_poisons
from kdcore.errors import InputError
from kdcore.models.spec import ModelSpec
from kdcore.runs.defend import write_outputs
from kdcore.runs.refine import read_flags

EVIL = "=cmd|' /C calc'!A0"
NAMES = (EVIL, "+plus", "-minus", "@at", "\tTab", "'quoted", "plain")
SPEC = ModelSpec("paper-cnn", len(NAMES), (1, 8, 8), (0.3,), (0.4,), NAMES)
N = 14


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    g = torch.Generator().manual_seed(0)
    score = torch.rand(N, generator=g) * 2 - 1  # negative scores too: numbers are never escaped
    flagged = score > 0.3
    labels = torch.arange(N) % len(NAMES)
    sources = tuple(f"{NAMES[int(c)]}/=HYPERLINK(x){i}.png" if i % 2 else f"ok/{i}.png" for i, c in enumerate(labels))
    return score, flagged, labels, sources


def test_escape_cell_oracle():
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "'=1"):
        assert escape_cell(text) == "'" + text and unescape_cell(escape_cell(text)) == text
    for text in ("plain", "1=1", "", "a-b"):
        assert escape_cell(text) == text and unescape_cell(text) == text


def test_rank_order_is_flagged_first_then_by_score():
    score = torch.tensor([0.9, 0.1, 0.5, -0.2, 0.3])
    flagged = torch.tensor([False, True, False, True, False])
    assert rank_order(score, flagged).tolist() == [1, 3, 0, 2, 4]


def _core_rows(**per_sample: torch.Tensor) -> tuple[Candidate, ...]:
    """The core method's table of `_data()`: file names, class names, two true poisons."""
    score, flagged, labels, sources = _data()
    return ranked_rows(
        score,
        flagged,
        labels,
        sources=sources,
        class_names=NAMES,
        poison_idx=torch.tensor([0, 3]),
        per_sample=per_sample,
    )


def test_round_trip_and_injection_is_escaped(tmp_path):
    score, flagged, labels, _ = _data()
    rows = _core_rows(teacher_pred=labels, student_pred=(labels + 1) % len(NAMES))
    path = write_candidates(tmp_path / FILE_NAME, rows)
    text = path.read_text(encoding="utf-8")
    raw = list(csv.DictReader(io.StringIO(text)))
    assert list(raw[0]) == list(COLUMNS)
    evil = [r for r in raw if int(r["label"]) == 0]
    assert evil and all(r["label_name"] == "'" + EVIL for r in evil)  # a spreadsheet shows text, runs nothing
    for r in raw:
        for col in ("source", "label_name"):
            assert not r[col].startswith(("=", "+", "-", "@", "\t", "\r")), (col, r[col])
    assert any(r["score"].startswith("-") for r in raw)  # numbers are written as numbers
    assert all(r["teacher_conf"] == "" for r in raw)  # a column the writer does not know stays empty

    back = read_candidates(path)
    assert [dataclass_tuple(c) for c in back] == [dataclass_tuple(c, rounded=True) for c in rows]
    assert [c.index for c in back] == rank_order(score, flagged).tolist()
    assert {c.index for c in back if c.is_poison} == {0, 3}


def dataclass_tuple(c: Candidate, rounded: bool = False) -> tuple:
    r = (lambda v: None if v is None else round(v, 5)) if rounded else (lambda v: v)
    return (c.rank, c.index, c.source, c.label, c.label_name, c.teacher_pred, c.student_pred,
            r(c.teacher_conf), r(c.student_conf), r(c.score), c.flagged, c.is_poison)  # fmt: skip


def test_both_writers_write_one_schema(tmp_path):
    """The detox table (core method) and a detector's defend run: the same columns, the same ranking."""
    score, flagged, labels, sources = _data()
    preds = labels.clone()
    detox = DetoxTable(labels, preds, (preds + 1) % 7, score.abs(), score.abs() / 2, score, flagged, None, sources)
    core = parse_candidates(detox.to_csv(NAMES))

    train = ImageSet(torch.zeros(N, 1, 8, 8, dtype=torch.uint8), labels, NAMES, sources, "train")
    inputs = DefenseInputs(model=torch.nn.Identity(), spec=SPEC, device=torch.device("cpu"), train=train)
    result = DefenseResult("ac", "detector", {}, scores=score, flagged=flagged)
    write_outputs(tmp_path, result, inputs)
    det_text = (tmp_path / FILE_NAME).read_text(encoding="utf-8")
    assert det_text.splitlines()[0] == detox.to_csv(NAMES).splitlines()[0] == ",".join(COLUMNS[:-1])
    det = read_candidates(tmp_path / FILE_NAME)
    assert [c.index for c in det] == [c.index for c in core]
    assert [c.label_name for c in det] == [c.label_name for c in core] == [NAMES[int(labels[c.index])] for c in det]
    assert all(c.teacher_pred is None for c in det) and all(c.teacher_pred is not None for c in core)


def test_readers_match_samples_of_an_injected_class(tmp_path):
    """refine's removal set and the dashboard's review queue read the escaped file by sample index."""
    from app.review_queue import class_names, filter_rows, load_candidates

    score, flagged, labels, sources = _data()
    rows = ranked_rows(score, flagged, labels, sources=sources, class_names=NAMES)
    write_candidates(tmp_path / FILE_NAME, rows)

    assert read_flags(tmp_path) == {i: bool(flagged[i]) for i in range(N)}
    loaded = load_candidates(str(tmp_path))
    names = class_names(loaded)
    assert names[0] == EVIL
    evil = filter_rows(loaded, classes=[0], only_flagged=False)
    assert sorted(c.index for c in evil) == [i for i in range(N) if int(labels[i]) == 0]
    assert all(c.source == sources[c.index] for c in loaded)
    assert all(c.name == f"{sources[c.index]} · #{c.index}" for c in loaded)


def _typed(c: Candidate) -> tuple:
    return tuple((type(v), v) for v in dataclasses.astuple(c))


def test_columns_give_back_what_the_csv_reader_returns(tmp_path):
    """Core method (with ground truth, escaped names), a detector (no predictions), built-in data
    (no file names) and an empty table: the columns read back equal rows of the same types."""
    score, flagged, labels, sources = _data()
    tables = {
        "core": _core_rows(teacher_pred=labels, student_pred=labels, teacher_conf=score.abs()),
        "detector": ranked_rows(score, flagged, labels, sources=sources, class_names=NAMES),
        "built-in": ranked_rows(score, flagged, labels, dataset="digits-train", poison_idx=torch.tensor([5])),
        "empty": [],
    }
    for name, rows in tables.items():
        csv_rows = read_candidates(write_candidates(tmp_path / f"{name}.csv", rows))
        back = from_columns(to_columns(csv_rows))
        assert back == csv_rows and [_typed(c) for c in back] == [_typed(c) for c in csv_rows], name
    assert from_columns({k: v for k, v in to_columns(csv_rows).items() if not k.startswith("score")}) is None


def test_unreadable_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="missing column"):
        parse_candidates("rank,index\n1,2\n")
    (Path(tmp_path) / FILE_NAME).write_text(to_csv([]).strip() + "\n1,oops,,0,,,,,,0.5,1\n")
    with pytest.raises(InputError, match="cannot be read"):
        read_candidates(tmp_path / FILE_NAME)


def test_sample_name_is_file_then_dataset_then_index():
    assert sample_name(1324, "1/train_02151.png", "digits") == "1/train_02151.png · #1324"
    assert sample_name(1324, "", "cifar10-train") == "cifar10-train · #1324"
    assert sample_name(7) == "#7"


@pytest.mark.parametrize(
    ("n", "total", "text"),
    [
        (2141, 10000, "2,141 of 10,000 (21 %)"),
        (250, 10000, "250 of 10,000 (2.5 %)"),
        (3, 10000, "3 of 10,000 (0.03 %)"),
        (0, 500, "0 of 500 (0 %)"),
        (500, 500, "500 of 500 (100 %)"),
        (0, 0, "0 of 0"),
    ],
)
def test_count_of_prints_the_scale(n, total, text):
    assert count_of(n, total) == text
    assert count_of(n, total) == f"{n:,} {share_of(n, total)}"


@pytest.mark.parametrize("sources", [None, "files"])
def test_the_name_column_round_trips_and_known_poisons_accept_it(tmp_path, sources):
    """Written by sample_name, read back to the same name (built-in data keep their dataset's name),
    and a known-poisons file may list samples by that name."""
    score, flagged, labels, files = _data()
    src = files if sources else None
    rows = ranked_rows(score, flagged, labels, sources=src, dataset="digits-train", class_names=NAMES)
    write_candidates(tmp_path / FILE_NAME, rows)
    loaded = read_candidates(tmp_path / FILE_NAME)
    want = [sample_name(c.index, files[c.index] if sources else "", "digits-train") for c in loaded]
    assert [c.name for c in loaded] == [r.name for r in rows] == want
    raw = list(csv.DictReader(io.StringIO((tmp_path / FILE_NAME).read_text(encoding="utf-8"))))
    assert [unescape_cell(r["name"]) for r in raw] == want

    train = ImageSet(torch.zeros(N, 1, 8, 8, dtype=torch.uint8), labels, NAMES, src, "digits-train")
    listed = [(c.index, w) for c, w in zip(loaded, want, strict=True) if "\t" not in w][:3]  # tab: a separator
    (tmp_path / "poisons.txt").write_text("name\n" + "\n".join(w for _, w in listed), encoding="utf-8")
    assert read_known_poisons(tmp_path / "poisons.txt", train).tolist() == sorted(i for i, _ in listed)
