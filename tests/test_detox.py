"""kdcore.detox: metrics on hand-made cases, and detoxify() with two hand-built models on real
digits whose logits for every image are set in advance (so flags and scores are known exactly)."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from kdcore import sandbox
from kdcore.candidates import sample_name
from kdcore.data.folders import load_labeled
from kdcore.data.imageset import ImageSet
from kdcore.detox import DetoxResult, detox_metrics, detoxify, read_known_poisons
from kdcore.errors import InputError
from kdcore.models.spec import ModelSpec

SPEC = ModelSpec("paper-cnn", 10, (1, 8, 8), (0.3,), (0.4,))
CPU = torch.device("cpu")
N = 200


class TableModel(nn.Module):
    """Returns a fixed logit row per image, found by the image's bytes (every digit is unique)."""

    def __init__(self, images: torch.Tensor, logits: torch.Tensor, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.rows = {x.numpy().tobytes(): i for i, x in enumerate(images)}
        self.register_buffer("logits", logits.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std).view(1, -1, 1, 1)
        images = (x * std + mean).mul(255).round().to(torch.uint8)  # undo ModelSpec.normalize
        return self.logits[[self.rows[img.numpy().tobytes()] for img in images]]


@pytest.fixture(scope="module")
def train(digits: ImageSet) -> ImageSet:
    return digits.subset(torch.arange(N), name="digits-train")


def _onehot(labels: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, 10).float() * scale


def test_detox_metrics_hand_case() -> None:
    flagged = torch.zeros(10, dtype=torch.bool)
    flagged[[1, 3, 4]] = True
    res = detox_metrics(flagged, torch.tensor([1, 3, 5]))
    assert res == DetoxResult(
        total=10, flagged=3, kept=7, precision=2 / 3, recall=2 / 3, false_positives=1, true_positives=2, n_poison=3
    )


def test_detox_metrics_without_ground_truth() -> None:
    res = detox_metrics(torch.tensor([True, False, True, False]), None)
    assert (res.total, res.flagged, res.kept) == (4, 2, 2)
    assert res.precision is None and res.recall is None and res.false_positives is None
    assert res.true_positives is None and res.n_poison is None


def test_detox_metrics_nothing_flagged() -> None:
    res = detox_metrics(torch.zeros(6, dtype=torch.bool), torch.tensor([0, 2]))
    assert res.precision is None
    assert res.recall == 0.0 and res.false_positives == 0 and res.kept == 6 and res.n_poison == 2


def test_detox_metrics_no_poisons() -> None:
    res = detox_metrics(torch.tensor([True, False]), torch.tensor([], dtype=torch.long))
    assert res.recall is None and res.precision == 0.0 and res.false_positives == 1


def test_identical_models_flag_nothing(train: ImageSet) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, 10, generator=g)
    model = TableModel(train.images, logits, SPEC)
    res, table, kept = detoxify(model, model, SPEC, train, CPU, poison_idx=torch.tensor([3, 4]))
    assert res.flagged == 0 and res.kept == N and res.recall == 0.0
    assert table.score.abs().max() < 1e-6
    assert torch.equal(table.teacher_pred, logits.argmax(1))
    assert torch.equal(kept.images, train.images) and torch.equal(kept.labels, train.labels)


def test_disagreements_are_flagged_and_ranked(train: ImageSet) -> None:
    labels = train.labels
    teacher = _onehot(labels, 5.0)
    student = _onehot(labels, 5.0)
    other = (labels + 1) % 10
    # Flagged: the student prefers another class with strength s; larger s → lower p_s(label).
    strengths = {10: 1.0, 20: 4.0, 30: 2.0}
    for i, s in strengths.items():
        student[i] = _onehot(other[i], s)
    # Flagged, but with an unsure teacher: a low score that must still rank above every agreement.
    teacher[40] = _onehot(labels[40], 1.0)
    student[40] = _onehot(other[40], 3.0)
    # Agreement with an unsure student: the highest score among the unflagged samples.
    student[50] = _onehot(labels[50], 0.01)

    t_model, s_model = TableModel(train.images, teacher, SPEC), TableModel(train.images, student, SPEC)
    res, table, kept = detoxify(t_model, s_model, SPEC, train, CPU, poison_idx=torch.tensor([10, 20, 99]))

    flagged = [10, 20, 30, 40]
    assert torch.nonzero(table.flagged).flatten().tolist() == flagged
    assert (res.flagged, res.kept, res.true_positives, res.false_positives) == (4, N - 4, 2, 2)
    assert res.precision == 0.5 and res.recall == pytest.approx(2 / 3)

    # Oracle: score = p_teacher(ŷ_t) − p_student(ŷ_t) at T = 1.
    p_t, p_s = teacher.softmax(1), student.softmax(1)
    expected = p_t.gather(1, labels[:, None]).squeeze(1) - p_s.gather(1, labels[:, None]).squeeze(1)
    assert torch.allclose(table.score, expected, atol=1e-6)
    assert torch.equal(table.teacher_pred, labels) and torch.equal(table.student_pred[flagged], other[flagged])

    ranked = table.ranked().tolist()
    assert ranked[:4] == [20, 30, 10, 40]
    assert table.score[40] < table.score[50]  # 40 outranks 50 only because it is flagged
    assert ranked[4] == 50
    assert sorted(ranked) == list(range(N))

    keep = [i for i in range(N) if i not in flagged]
    assert kept.name == "digits-train-detoxified"
    assert torch.equal(kept.images, train.images[keep]) and torch.equal(kept.labels, train.labels[keep])

    rows = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert len(rows) == N
    assert [int(r["index"]) for r in rows] == ranked
    assert [r["rank"] for r in rows[:2]] == ["1", "2"]
    assert rows[0]["flagged"] == "1" and rows[0]["is_poison"] == "1" and rows[4]["flagged"] == "0"
    assert float(rows[0]["score"]) == pytest.approx(float(table.score[20]), abs=1e-5)


def test_to_csv_columns(train: ImageSet) -> None:
    model = TableModel(train.images, _onehot(train.labels, 3.0), SPEC)
    _, plain, _ = detoxify(model, model, SPEC, train, CPU)
    lines = plain.to_csv().splitlines()
    assert len(lines) == N + 1
    assert lines[0].split(",") == [
        "rank", "index", "name", "source", "label", "label_name", "teacher_pred", "student_pred",
        "teacher_conf", "student_conf", "score", "flagged",
    ]  # fmt: skip
    assert all(line.split(",")[5] == "" for line in lines[1:])  # kdcore.candidates.COLUMNS; no names given
    # one name per sample: no file names, so the training set's name and the index
    assert all(line.split(",")[2] == sample_name(int(line.split(",")[1]), "", train.name) for line in lines[1:])

    _, table, _ = detoxify(model, model, SPEC, train, CPU, poison_idx=torch.tensor([0]))
    names = tuple(f"digit-{i}" for i in range(10))
    rows = list(csv.DictReader(io.StringIO(table.to_csv(names))))
    assert list(rows[0])[4:6] == ["label", "label_name"] and list(rows[0])[-1] == "is_poison"
    assert all(r["label_name"] == f"digit-{r['label']}" for r in rows)
    assert sum(int(r["is_poison"]) for r in rows) == 1


# --- --known-poisons with the names of the user's own training zip -------------------------------


def _class_zip(path, names: list[str]):
    """A real zip of tiny grey PNGs under the given entry names (class folders, maybe one top folder)."""
    with zipfile.ZipFile(path, "w") as z:
        for i, name in enumerate(names):
            buf = io.BytesIO()
            Image.fromarray(np.full((4, 4), 10 * i, np.uint8), "L").save(buf, format="PNG")
            z.writestr(name, buf.getvalue())
    return path


def _poisons(tmp_path, *cells: str):
    f = tmp_path / "poisons.txt"
    f.write_text("\n".join(cells) + "\n", encoding="utf-8")
    return f


def test_known_poisons_take_the_names_in_a_zip_with_a_top_folder(tmp_path) -> None:
    """As they stand in the zip (`train/1/c.png`), without its top folder (`0/b.png`, candidates.csv's
    source), with a zip tool's other spellings, and the one name; read through the sandbox as an audit does."""
    zip_path = _class_zip(tmp_path / "train.zip", ["train/0/a.png", "train/0/b.png", "train/1/c.png", "train/1/d.png"])
    train = sandbox.load_labeled(zip_path, (1, 4, 4), name="train")
    assert train.sources == ("0/a.png", "0/b.png", "1/c.png", "1/d.png") and train.top == "train"
    cells = ["train/1/c.png", "0/b.png", "train\\1\\d.png", "./train/0/b.png"]
    assert read_known_poisons(_poisons(tmp_path, *cells), train).tolist() == [1, 2, 3]
    assert read_known_poisons(_poisons(tmp_path, "0/a.png · #0"), train).tolist() == [0]
    with pytest.raises(InputError, match=r"not in the training set, e.g. 'other/1/c.png'.*zip \('train/0/a.png' or"):
        read_known_poisons(_poisons(tmp_path, "other/1/c.png"), train)


def test_known_poisons_take_the_names_in_a_zip_without_a_top_folder(tmp_path) -> None:
    train = load_labeled(_class_zip(tmp_path / "t.zip", ["0/a.png", "0/b.png", "1/c.png"]), (1, 4, 4))
    assert train.top == ""
    assert read_known_poisons(_poisons(tmp_path, "1/c.png", "0/a.png"), train).tolist() == [0, 2]
    with pytest.raises(InputError, match=r"e\.g\. 't/1/c\.png'.* zip \('0/a\.png'\)") as e:
        read_known_poisons(_poisons(tmp_path, "t/1/c.png"), train)  # no top folder to strip
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("entries", "cell", "fits"),
    [
        # a class folder named like the zip's top folder: `train/1/x.png` is sample 1 as written in the
        # zip, and sample 0's source under the top folder
        (["train/1/x.png", "train/train/1/x.png"], "train/1/x.png", "'1/x.png · #0', 'train/1/x.png · #1'"),
        # two entries that read as one name (`1//x.png` is `1/x.png` to the loaders)
        (["0/a.png", "1/x.png", "1//x.png"], "1/x.png", "'1/x.png · #1', '1/x.png · #2'"),
    ],
)
def test_a_known_poison_name_that_fits_several_samples_is_named(tmp_path, entries, cell, fits) -> None:
    train = load_labeled(_class_zip(tmp_path / "train.zip", entries), (1, 4, 4))
    with pytest.raises(InputError, match="1 name") as e:
        read_known_poisons(_poisons(tmp_path, "0", cell), train)
    message = str(e.value)
    assert f"fit several training samples: {cell!r}; e.g. {cell!r} fits {fits}" in message, message
    assert "\n" not in message
