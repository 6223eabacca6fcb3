"""kdcore.triggers: BadNets / Blended stamping, serialisation, parsing and poisoning, on real digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.data.imageset import ImageSet
from kdcore.errors import ConfigError
from kdcore.triggers import (
    SIG,
    TRIGGERS,
    BadNets,
    Blended,
    Trigger,
    WaNet,
    parse_trigger,
    poison_dataset,
    poison_test_set,
)
from kdcore.triggers.badnets import LOCATIONS
from kdcore.words import KIND_WORDS

# One non-default instance of every parametric kind; those that read files are in conftest.py
# (`file_examples`); the round-trip tests fail if a kind is missing from both.
EXAMPLES: dict[str, Trigger] = {
    "badnets": BadNets(target=7, source=2, size=4, location="top-left", margin=2, color=(255, 255, 0)),
    "blended": Blended(target=3, source=None, alpha=0.25, pattern_seed=11),
    "sig": SIG(target=1, source=4, delta=30.0, frequency=3.5),
    "wanet": WaNet(target=0, source=None, grid_size=5, strength=1.5, grid_seed=2),
}

# (location, image size) → (first row, first col) of a size-3 margin-1 patch, worked out by hand.
BOXES = {
    ("bottom-right", 28): (24, 24),
    ("bottom-center", 28): (24, 12),
    ("bottom-left", 28): (24, 1),
    ("top-right", 28): (1, 24),
    ("top-left", 28): (1, 1),
    ("center", 28): (12, 12),
    ("bottom-right", 32): (28, 28),
    ("bottom-center", 32): (28, 14),
    ("bottom-left", 32): (28, 1),
    ("top-right", 32): (1, 28),
    ("top-left", 32): (1, 1),
    ("center", 32): (14, 14),
}


def _grey(n: int, hw: int, value: int = 40) -> torch.Tensor:
    return torch.full((n, 1, hw, hw), value, dtype=torch.uint8)


def test_every_location_has_a_hand_computed_box() -> None:
    assert {loc for loc, _ in BOXES} == set(LOCATIONS)


@pytest.mark.parametrize(("location", "hw"), sorted(BOXES))
def test_badnets_box_position(location: str, hw: int) -> None:
    trig = BadNets(size=3, location=location, margin=1)
    r, c = BOXES[location, hw]
    assert trig.box(hw, hw) == (r, c)

    images = _grey(2, hw)
    out = trig.stamp(images)
    inside = torch.zeros(hw, hw, dtype=torch.bool)
    inside[r : r + 3, c : c + 3] = True
    assert (out[:, :, inside] == 255).all()
    assert torch.equal(out[:, :, ~inside], images[:, :, ~inside])
    assert torch.equal(images, _grey(2, hw)), "stamp must not modify its input"


def test_badnets_bottom_right_28_rows_and_cols_24_to_26() -> None:
    out = BadNets(size=3, location="bottom-right", margin=1).stamp(_grey(1, 28, 0))[0, 0]
    rows, cols = torch.nonzero(out, as_tuple=True)
    assert sorted(set(rows.tolist())) == [24, 25, 26]
    assert sorted(set(cols.tolist())) == [24, 25, 26]


def test_badnets_grey_image_gets_luminance_of_rgb_colour() -> None:
    out = BadNets(size=2, margin=0, color=(255, 255, 0)).stamp(_grey(1, 8, 0))
    assert round(0.299 * 255 + 0.587 * 255) == 226
    assert out[0, 0, 6:, 6:].unique().tolist() == [226]


def test_badnets_rgb_image_gets_exact_colour() -> None:
    images = torch.zeros((3, 3, 32, 32), dtype=torch.uint8)
    out = BadNets(size=4, location="bottom-center", margin=0, color=(255, 200, 10)).stamp(images)
    patch = out[:, :, 28:32, 14:18]
    assert patch[:, 0].unique().tolist() == [255]
    assert patch[:, 1].unique().tolist() == [200]
    assert patch[:, 2].unique().tolist() == [10]
    assert int(out.sum(dim=(0, 1)).count_nonzero()) == 16


def test_badnets_single_grey_level_colour() -> None:
    trig = BadNets(color=(128,))
    assert trig.color == (128,)
    assert BadNets(color=128).color == (128,)
    rgb = trig.stamp(torch.zeros((1, 3, 8, 8), dtype=torch.uint8))
    assert rgb[0, :, 4:7, 4:7].unique().tolist() == [128]
    grey = trig.stamp(torch.zeros((1, 1, 8, 8), dtype=torch.uint8))
    assert grey[0, 0, 4:7, 4:7].unique().tolist() == [128]


def test_badnets_patch_that_does_not_fit_raises_on_stamp() -> None:
    trig = BadNets(size=8, margin=1)
    with pytest.raises(ConfigError, match="does not fit"):
        trig.stamp(_grey(1, 8))
    assert BadNets(size=8, margin=0).stamp(_grey(1, 8)).eq(255).all()


@pytest.mark.parametrize(
    "kwargs", [{"location": "middle"}, {"size": 0}, {"margin": -1}, {"color": (1, 2)}, {"color": (0, 0, 256)}]
)
def test_badnets_invalid_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        BadNets(**kwargs)


def test_blended_matches_hand_formula(digits: ImageSet) -> None:
    alpha = 0.25  # 0.75·x + 0.25·p is exact in float32, so rounding (half to even) is exact too
    trig = Blended(alpha=alpha, pattern_seed=5)
    images = digits.images[:20]
    pattern = trig.pattern((1, 8, 8)).numpy().astype(np.float64)
    expected = np.rint((1 - alpha) * images.numpy().astype(np.float64) + alpha * pattern)
    assert np.array_equal(trig.stamp(images).numpy(), expected.astype(np.uint8))


def test_blended_alpha_point_one_within_rounding(digits: ImageSet) -> None:
    trig = Blended(alpha=0.1, pattern_seed=0)
    x = digits.images[:50].numpy().astype(np.float64)
    p = trig.pattern((1, 8, 8)).numpy().astype(np.float64)
    out = trig.stamp(digits.images[:50]).numpy().astype(np.float64)
    assert np.abs(out - (0.9 * x + 0.1 * p)).max() <= 0.5 + 1e-4
    assert Blended(alpha=1.0).stamp(digits.images[:3]).eq(Blended(alpha=1.0).pattern((1, 8, 8))).all()


def test_blended_pattern_is_seeded() -> None:
    a, b = Blended(pattern_seed=1), Blended(pattern_seed=2)
    assert torch.equal(a.pattern((3, 16, 16)), Blended(pattern_seed=1).pattern((3, 16, 16)))
    assert not torch.equal(a.pattern((3, 16, 16)), b.pattern((3, 16, 16)))
    assert a.pattern((3, 16, 16)).dtype == torch.uint8


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_blended_invalid_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        Blended(alpha=alpha)


@pytest.fixture
def examples(file_examples) -> dict[str, Trigger]:
    return {**EXAMPLES, **file_examples}


def test_every_registered_kind_has_an_example(examples) -> None:
    assert set(examples) == set(TRIGGERS)


@pytest.mark.parametrize("kind", sorted(TRIGGERS))
def test_to_dict_from_dict_round_trip(kind: str, examples) -> None:
    trig = examples[kind]
    d = trig.to_dict()
    assert d["kind"] == kind
    again = Trigger.from_dict(json.loads(json.dumps(d)))
    assert type(again) is TRIGGERS[kind]
    assert again == trig
    assert again.to_dict() == d


@pytest.mark.parametrize("kind", sorted(TRIGGERS))
def test_parse_trigger_json_and_file(kind: str, tmp_path, examples) -> None:
    trig = examples[kind]
    text = json.dumps(trig.to_dict())
    assert parse_trigger(text) == trig
    path = tmp_path / "trigger.json"
    path.write_text(text)
    assert parse_trigger(str(path)) == trig


@pytest.mark.parametrize("kind", sorted(TRIGGERS))
def test_describe_says_the_trigger_in_words_without_a_path(kind: str, examples) -> None:
    trig = examples[kind]
    text = trig.describe()
    assert text.startswith(KIND_WORDS[kind]) and text.endswith(f"target class {trig.target}" + _from(trig.source))
    assert "/" not in text.replace("255/255/0", "") and "=" not in text and "None" not in text, text  # no path, no repr
    for name in ("image", "mask", "path"):  # a file by its name only
        if trig.to_dict().get(name):
            assert Path(trig.to_dict()[name]).name in text
    names = [f"name{i}" for i in range(10)]
    assert trig.describe(names).endswith(f"target class name{trig.target} ({trig.target})" + _from(trig.source, names))


def _from(source: int | None, names: list[str] | None = None) -> str:
    if source is None:
        return ""
    return f", only from class {f'{names[source]} ({source})' if names else source}"


def test_describe_says_size_place_and_opacity() -> None:
    assert BadNets(target=7, size=3).describe(("0", "1", "2", "3", "4", "5", "6", "Sneaker")) == (
        "BadNets square, 3×3 px, white, at the bottom-right 1 px from the edges → target class Sneaker (7)"
    )
    assert EXAMPLES["badnets"].describe() == (
        "BadNets square, 4×4 px, colour 255/255/0, at the top-left 2 px from the edges → target class 7, "
        "only from class 2"
    )
    assert Blended(target=3, alpha=0.25).describe(("class 0", "class 1", "class 2", "class 3")) == (
        "blended random noise, opacity 25 % → target class 3"
    )


def test_parse_trigger_short_form() -> None:
    trig = parse_trigger("badnets:target=7, size=4,location=top-right,margin=0,color=255/255/0")
    assert trig == BadNets(target=7, size=4, location="top-right", margin=0, color=(255, 255, 0))
    assert parse_trigger("blended:target=1,alpha=0.2,source=3") == Blended(target=1, source=3, alpha=0.2)
    assert parse_trigger("badnets:source=none") == BadNets()
    assert parse_trigger("badnets") == BadNets()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("trojan:target=1", "Unknown trigger kind"),
        ("badnets:target=1,colour=255", "Unknown keys"),
        ("badnets:location=middle", "location"),
        ("badnets:target=3,source=3", "must differ"),
        ("badnets:target=-1", "≥ 0"),
        ("badnets:size", "key=value"),
        ('{"kind": "badnets", "target": ', "not valid"),
        ('{"target": 1}', "Unknown trigger kind"),
        ("/nonexistent/trigger.json", "does not exist"),
        ('{"kind": "blended", "alpha": "strong"}', "Bad trigger values"),
    ],
)
def test_parse_trigger_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_trigger(text)


@pytest.mark.parametrize("text", ["badnets:color=red", "badnets:size=2.5", "badnets:target=1.5"])
def test_parse_trigger_rejects_non_integer_values(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_trigger(text)


def test_victims_all_to_one_and_source_specific() -> None:
    labels = torch.tensor([0, 1, 2, 3, 7, 7, 2])
    assert BadNets(target=7).victims(labels).tolist() == [True, True, True, True, False, False, True]
    assert BadNets(target=7, source=2).victims(labels).tolist() == [False, False, True, False, False, False, True]


def test_check_classes() -> None:
    BadNets(target=9, source=0).check_classes(10)
    with pytest.raises(ConfigError, match="target class 10"):
        BadNets(target=10).check_classes(10)
    with pytest.raises(ConfigError, match="source class 12"):
        BadNets(target=1, source=12).check_classes(10)


@pytest.mark.parametrize("source", [None, 3])
def test_poison_dataset(digits: ImageSet, source: int | None) -> None:
    trig = BadNets(target=7, source=source, size=2, location="top-left", margin=0)
    poisoned, idx = poison_dataset(digits, trig, 60, torch.Generator().manual_seed(0))

    assert len(poisoned) == len(digits) and poisoned.class_names == digits.class_names
    assert idx.tolist() == sorted(set(idx.tolist())) and len(idx) == 60
    orig = digits.labels[idx]
    assert (orig != 7).all()
    if source is not None:
        assert (orig == source).all()
    assert (poisoned.labels[idx] == 7).all()

    other = torch.ones(len(digits), dtype=torch.bool)
    other[idx] = False
    assert torch.equal(poisoned.labels[other], digits.labels[other])
    assert torch.equal(poisoned.images[other], digits.images[other])
    assert torch.equal(poisoned.images[idx], trig.stamp(digits.images[idx]))
    # Every real digit has a black top-left corner, so each stamp really changed its image.
    assert (poisoned.images[idx] != digits.images[idx]).flatten(1).any(1).all()


def test_poison_dataset_is_seeded(digits: ImageSet) -> None:
    trig = BadNets(target=7)
    a = poison_dataset(digits, trig, 30, torch.Generator().manual_seed(4))[1]
    b = poison_dataset(digits, trig, 30, torch.Generator().manual_seed(4))[1]
    c = poison_dataset(digits, trig, 30, torch.Generator().manual_seed(5))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_poison_dataset_too_many(digits: ImageSet) -> None:
    n_source = int((digits.labels == 3).sum())
    trig = BadNets(target=7, source=3)
    assert len(poison_dataset(digits, trig, n_source, torch.Generator())[1]) == n_source
    with pytest.raises(ConfigError, match="Cannot poison"):
        poison_dataset(digits, trig, n_source + 1, torch.Generator())
    with pytest.raises(ConfigError, match="does not exist"):
        poison_dataset(digits, BadNets(target=10), 1, torch.Generator())


@pytest.mark.parametrize("source", [None, 3])
def test_poison_test_set(digits: ImageSet, source: int | None) -> None:
    trig = BadNets(target=7, source=source)
    ptest, victims = poison_test_set(digits, trig)
    keep = digits.labels != 7
    assert len(ptest) == int(keep.sum()) and (ptest.labels != 7).all()
    assert torch.equal(ptest.labels, digits.labels[keep])
    assert torch.equal(ptest.images, trig.stamp(digits.images[keep]))
    expected = ptest.labels != 7 if source is None else ptest.labels == source
    assert torch.equal(victims, expected)
    assert int(victims.sum()) == (int(keep.sum()) if source is None else int((digits.labels == 3).sum()))
