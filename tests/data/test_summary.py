"""kdcore.data.summary: what an upload holds, and the checks the New-audit form shows before submit."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdcore import sandbox
from kdcore.data.summary import HEADER_SAMPLE, ImageSetSummary, check_uploads, class_count_outliers, summarize
from kdcore.errors import InputError
from kdcore.sandbox.image_summary import summarize as summarize_sandboxed


def _png(w: int = 8, h: int = 8, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3) if mode == "RGB" else (h, w), np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    members = {f"test/{c}/{i}.png": _png() for c in ("cat", "dog", "emu") for i in range(3)}
    members["test/cat/big.png"] = _png(16, 12, "RGB")
    members["test/readme.txt"] = b"hello"
    members["test/dog/broken.png"] = b"\x89PNG not really"
    return _zip(tmp_path / "test.zip", members)


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    return _zip(tmp_path / "flat.zip", {f"u{i}.png": _png() for i in range(5)})


def test_a_labelled_zip_gives_counts_classes_sizes_and_skipped_files(labelled: Path) -> None:
    s = summarize(labelled)
    assert s.images == 11 and s.files == 12  # the single top folder "test/" is the root, as the loaders take it
    assert s.folders == (("cat", 4), ("dog", 4), ("emu", 3))
    assert s.classes == ("cat", "dog", "emu") and s.labelled == "" and s.at_top == 0
    assert dict(s.sizes) == {"8×8 grey": 9, "16×12 colour": 1}
    assert s.headers_read == 11 and s.skipped_total == 2
    assert set(s.skipped) == {"readme.txt (not an image file)", "dog/broken.png (not a readable image)"}


def test_an_unlabelled_zip_says_why_it_is_not_labelled(flat: Path) -> None:
    s = summarize(flat)
    assert s.images == 5 and s.at_top == 5 and s.classes == ()
    assert "directly in the top level" in s.labelled


def test_headers_are_sampled_not_all_read(tmp_path: Path) -> None:
    n = HEADER_SAMPLE * 3 + 1
    s = summarize(_zip(tmp_path / "many.zip", {f"a/{i:05d}.png": _png() for i in range(n)}))
    assert s.images == n and s.headers_read <= HEADER_SAMPLE and s.headers_read >= HEADER_SAMPLE // 2


def test_no_images_is_the_loaders_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No images"):
        summarize(_zip(tmp_path / "txt.zip", {"a.txt": b"x"}))


def test_from_dict_round_trips_and_refuses_other_shapes(labelled: Path) -> None:
    s = summarize(labelled)
    assert ImageSetSummary.from_dict(s.to_dict()) == s
    for bad in ({}, {**s.to_dict(), "images": -1}, {**s.to_dict(), "folders": [["a", "1"]]}, [1]):
        with pytest.raises(InputError, match="broken"):
            ImageSetSummary.from_dict(bad)


def test_the_sandboxed_summary_is_the_same(labelled: Path) -> None:
    assert summarize_sandboxed(labelled) == summarize(labelled)
    assert sandbox  # the fork server is shared with the other sandbox tests


def _s(classes: tuple[str, ...] = (), at_top: int = 0, labelled: str = "", skipped: int = 0) -> ImageSetSummary:
    folders = tuple((c, 3) for c in classes)
    return ImageSetSummary(
        "x.zip", 9, 9, folders, at_top, (), 9, ("a.txt (not an image file)",) * skipped, skipped, labelled
    )


def _levels(findings) -> list[tuple[str, str]]:
    return [(f.level, f.slot) for f in findings]


def test_an_unlabelled_set_in_a_labelled_slot_is_an_error() -> None:
    f = check_uploads({"test": _s(at_top=9, labelled="9 image(s) sit directly in the top level")}, 10)
    assert _levels(f) == [("error", "test")] and "not a labelled set" in f[0].message


def test_a_labelled_set_in_the_unlabelled_slot_is_a_warning() -> None:
    f = check_uploads({"unlabeled": _s(("cat", "dog"))})
    assert _levels(f) == [("warning", "unlabeled")] and "look labelled" in f[0].message
    assert check_uploads({"unlabeled": _s(at_top=9, labelled="top level")}) == []


def test_class_names_differing_between_training_and_test_is_an_error() -> None:
    f = check_uploads({"train": _s(("a", "b", "c")), "test": _s(("a", "b", "d"))}, 3)
    assert _levels(f) == [("error", "test")]
    assert "training set's" in f[0].message and "d" in f[0].message and "no folder for: c" in f[0].message


def test_classes_against_the_model() -> None:
    f = check_uploads({"train": _s(("a", "b", "c"))}, 10)
    assert _levels(f) == [("error", "train")] and "3 class folders" in f[0].message and "10 classes" in f[0].message
    f = check_uploads({"test": _s(("a", "b"))}, 2, ("a", "x"))
    assert _levels(f) == [("error", "test")] and "model's class names" in f[0].message
    assert check_uploads({"train": _s(("a", "b")), "test": _s(("a", "b"))}, 2) == []
    assert check_uploads({"train": _s(("a", "b"))}, None) == []  # no model yet: nothing to compare with


def test_skipped_files_are_a_warning() -> None:
    f = check_uploads({"train": _s(("a", "b"), skipped=2)}, 2)
    assert _levels(f) == [("warning", "train")] and "2 file(s) will be skipped" in f[0].message


def test_a_class_that_bulges_in_the_training_set_is_a_warning() -> None:
    """The peer toolkit's BadNets zip: 2,905 images in the target class against 1,858–1,968 in the others."""
    counts = dict(zip("0123456789", (1858, 2905, 1900, 1968, 1880, 1930, 1870, 1950, 1890, 1920), strict=True))
    s = ImageSetSummary("train.zip", 20_000, 20_000, tuple(counts.items()), 0, (), 200, (), 0, "")
    f = check_uploads({"train": s}, 10)
    assert _levels(f) == [("warning", "train")]
    assert "class 1 holds 2,905 images, 1.5× the median class (1,910)" in f[0].message
    assert check_uploads({"test": s}, 10) == []  # a test set's balance is not the attacker's doing


def test_class_count_outliers_only_when_few_stand_out() -> None:
    assert class_count_outliers({"a": 100, "b": 104, "c": 98, "d": 121}) == []  # +21 %: natural spread
    assert class_count_outliers({"a": 100, "b": 104, "c": 98, "d": 150}) == [("d", 150, 102.0)]
    assert class_count_outliers({"a": 100, "b": 200, "c": 210, "d": 220, "e": 99, "f": 101, "g": 98}) == []
    assert class_count_outliers({"a": 5, "b": 50}) == []  # two classes: no median to stand out from
