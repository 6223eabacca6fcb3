"""kdcore.triggers.TriggeredSet: a folder or zip of already-triggered images, measured by
`evaluate_model`'s one code path, against models whose every prediction is known (tests/test_evaluate.py):
the same images written to disk must give the very numbers the stamping trigger gives."""

from __future__ import annotations

import zipfile

import pytest
import torch

from kdcore.data.imageset import ImageSet
from kdcore.errors import ConfigError, InputError
from kdcore.evaluate import evaluate_model
from kdcore.triggers import TriggeredSet, poison_test_set
from tests.conftest import _write_png
from tests.test_evaluate import CPU, SPEC, TARGET, TRIGGER, ConstantModel, LookupBackdoor


@pytest.fixture(scope="module")
def test_set(digits: ImageSet) -> ImageSet:
    return digits.subset(torch.arange(300), name="digits-test")


def _write(root, images: torch.Tensor, labels: torch.Tensor | None) -> None:
    for i, img in enumerate(images):
        folder = root if labels is None else root / str(int(labels[i]))
        _write_png(folder / f"t{i:04d}.png", img)


@pytest.fixture(scope="module")
def stamped(test_set: ImageSet) -> ImageSet:
    """D^p_test of the stamping TRIGGER: the non-target test images with the white top-left pixel."""
    return poison_test_set(test_set, TRIGGER)[0]


def test_labelled_folder_gives_the_stamping_triggers_numbers(digits, test_set, stamped, tmp_path) -> None:
    # The target's own images are in the folder too: they are left out, as from a stamped D^p_test.
    targets = test_set.subset(torch.nonzero(test_set.labels == TARGET).flatten())
    _write(
        tmp_path,
        torch.cat([stamped.images, TRIGGER.stamp(targets.images)]),
        torch.cat([stamped.labels, targets.labels]),
    )
    trig = TriggeredSet(path=str(tmp_path), target=TARGET)
    model = LookupBackdoor(digits, SPEC)
    want = evaluate_model(model, SPEC, test_set, CPU, TRIGGER)
    got = evaluate_model(model, SPEC, test_set, CPU, trig)
    assert 0.0 < got.asr < 1.0
    assert got == want  # asr, poison_acc, n_poison and both confusion matrices
    assert trig.notes() == [
        f"Triggered test set {tmp_path.name}: {len(stamped) + len(targets)} images, labelled by folder; "
        f"{len(targets)} of the target class left out (they cannot show a flip)."
    ]


def test_always_target_model_has_asr_1(test_set, stamped, tmp_path) -> None:
    _write(tmp_path, stamped.images, stamped.labels)
    res = evaluate_model(ConstantModel(TARGET), SPEC, test_set, CPU, TriggeredSet(path=str(tmp_path), target=TARGET))
    assert res.asr == 1.0 and res.poison_acc == 0.0 and res.n_poison == len(stamped)


def test_unlabelled_every_image_is_a_victim_and_poison_acc_is_none(digits, test_set, stamped, tmp_path) -> None:
    _write(tmp_path, stamped.images, None)
    trig = TriggeredSet(path=str(tmp_path), target=TARGET)
    res = evaluate_model(LookupBackdoor(digits, SPEC), SPEC, test_set, CPU, trig)
    assert res.asr == evaluate_model(LookupBackdoor(digits, SPEC), SPEC, test_set, CPU, TRIGGER).asr
    assert res.poison_acc is None and res.confusion_poison == () and res.n_poison == len(stamped)
    assert "unlabelled: every image counts as a victim" in trig.notes()[0]
    assert "poison_acc is not measurable" in trig.notes()[0]
    assert evaluate_model(ConstantModel(3), SPEC, test_set, CPU, trig).asr == 0.0


def test_unlabelled_with_a_source_are_all_of_the_source_class(test_set, stamped, tmp_path) -> None:
    ones = stamped.subset(torch.nonzero(stamped.labels == 1).flatten())
    _write(tmp_path, ones.images, None)
    trig = TriggeredSet(path=str(tmp_path), target=TARGET, source=1)
    res = evaluate_model(ConstantModel(1), SPEC, test_set, CPU, trig)
    assert res.asr == 0.0 and res.poison_acc == 1.0 and res.n_poison == len(ones)
    assert "all taken as the source class 1" in trig.notes()[0]


def test_zip_with_a_top_folder_and_a_subset_of_classes(digits, test_set, stamped, tmp_path) -> None:
    some = stamped.subset(torch.nonzero(torch.isin(stamped.labels, torch.tensor([0, 1, 5]))).flatten())
    _write(tmp_path / "files", some.images, some.labels)
    path = tmp_path / "trig.zip"
    with zipfile.ZipFile(path, "w") as z:
        for p in sorted((tmp_path / "files").rglob("*.png")):
            z.write(p, f"trig/{p.relative_to(tmp_path / 'files').as_posix()}")
    res = evaluate_model(LookupBackdoor(digits, SPEC), SPEC, test_set, CPU, TriggeredSet(path=str(path), target=7))
    n0_1 = int(torch.isin(some.labels, torch.tensor([0, 1])).sum())  # LookupBackdoor flips 0, 1, 2 only
    assert res.asr == pytest.approx(n0_1 / len(some)) and res.poison_acc == pytest.approx(1 - n0_1 / len(some))


def test_bad_layouts_are_one_line_errors(test_set, stamped, tmp_path) -> None:
    _write(tmp_path / "mixed", stamped.images[:2], None)
    _write(tmp_path / "mixed", stamped.images[2:4], stamped.labels[2:4])
    _write_png(tmp_path / "names" / "cat" / "x.png", stamped.images[0])
    _write_png(tmp_path / "names" / "1" / "y.png", stamped.images[1])
    for folder, match in (
        ("mixed", "mixes images at the top level"),
        ("names", r"\['cat'\].*not classes of the model"),
    ):
        trig = TriggeredSet(path=str(tmp_path / folder), target=TARGET)
        with pytest.raises(InputError, match=match) as e:
            evaluate_model(ConstantModel(0), SPEC, test_set, CPU, trig)
        assert "\n" not in str(e.value)


def test_a_missing_path_and_stamping_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TriggeredSet(path=str(tmp_path / "nope.zip"), target=1)
    with pytest.raises(ConfigError, match="needs path"):
        TriggeredSet(target=1)
    with pytest.raises(ConfigError, match="brings its own images"):
        TriggeredSet(path=str(tmp_path), target=1).stamp(torch.zeros((1, 1, 8, 8), dtype=torch.uint8))
