"""kdcore.triggers.sig: the sinusoid against Barni et al.'s formula, serialisation, and both poisoning modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdcore.data.imageset import ImageSet
from kdcore.errors import ConfigError
from kdcore.triggers import SIG, Trigger, parse_trigger, poison_dataset, poison_test_set


def _by_hand(images: np.ndarray, delta: float, f: float) -> np.ndarray:
    """clip(round(x + Δ·sin(2π·j·f/W))) in float64, j the column."""
    w = images.shape[-1]
    v = np.array([delta * np.sin(2 * np.pi * j * f / w) for j in range(w)])
    return np.clip(np.rint(images.astype(np.float64) + v), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("delta", "f"), [(20, 6), (40, 3), (7.5, 1.5)])
def test_sig_matches_hand_formula_on_digits(digits: ImageSet, delta: float, f: float) -> None:
    images = digits.images[:40]
    out = SIG(delta=delta, frequency=f).stamp(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert np.array_equal(out.numpy(), _by_hand(images.numpy(), delta, f))
    assert torch.equal(images, digits.images[:40]), "stamp must not modify its input"


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 32, 32), (1, 3, 17, 23)])
def test_sig_matches_hand_formula_any_size_and_channels(shape: tuple[int, ...]) -> None:
    images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    out = SIG().stamp(images)
    assert np.array_equal(out.numpy(), _by_hand(images.numpy(), 20.0, 6.0))


def test_sig_is_a_column_signal_on_mid_grey() -> None:
    # On mid-grey nothing clips: every row and channel carries the same stripe, columns differ.
    out = SIG(delta=20, frequency=6).stamp(torch.full((1, 3, 28, 28), 128, dtype=torch.uint8)).int()
    row = out[0, 0, 0]
    assert (out == row).all()
    # sin(2π·j·6/28) = sin(3πj/7) peaks at j = 1 (and 6) with sin(3π/7) = 0.9749: 20·0.9749 = 19.50 (just under).
    assert row[0] == 128 and row[1] == row.max() == 147 and row.min() == 109
    # f = 6 on 28 columns: the stripe repeats every 14/3 columns, so column j and j + 14 agree.
    assert torch.equal(row[:14], row[14:])


def test_sig_clips_at_both_ends() -> None:
    black, white = torch.zeros((1, 1, 8, 16), dtype=torch.uint8), torch.full((1, 1, 8, 16), 255, dtype=torch.uint8)
    trig = SIG(delta=30, frequency=1)
    assert trig.stamp(black).min() == 0 and trig.stamp(black).max() == 30
    assert trig.stamp(white).max() == 255 and trig.stamp(white).min() == 225


def test_sig_fields_are_stored_as_floats() -> None:
    trig = SIG(target=7, delta=20, frequency=6)
    assert trig.delta == 20.0 and isinstance(trig.delta, float) and isinstance(trig.frequency, float)
    assert trig == SIG(target=7)


def test_sig_round_trip_and_short_form(tmp_path) -> None:
    trig = SIG(target=3, source=1, delta=35.5, frequency=4)
    d = trig.to_dict()
    assert d == {"kind": "sig", "target": 3, "source": 1, "delta": 35.5, "frequency": 4.0}
    assert Trigger.from_dict(json.loads(json.dumps(d))) == trig
    assert parse_trigger("sig:target=7,delta=20,frequency=6") == SIG(target=7, delta=20.0, frequency=6.0)
    assert parse_trigger("sig") == SIG()
    assert parse_trigger("sig:target=3,source=1,delta=35.5,frequency=4") == trig
    assert SIG(target=7).describe() == "SIG sine stripes, amplitude 20, 6 cycles across the image → target class 7"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("sig:delta=0", "delta"),
        ("sig:delta=-5", "delta"),
        ("sig:delta=300", "delta"),
        ("sig:delta=loud", "delta"),
        ("sig:frequency=0", "frequency"),
        ("sig:frequency=-1", "frequency"),
        ("sig:frequency=high", "frequency"),
        ('{"kind": "sig", "delta": true}', "delta"),
        ('{"kind": "sig", "frequency": NaN}', "frequency"),
        ("sig:amplitude=20", "Unknown keys"),
        ("sig:target=7,source=7", "must differ"),
    ],
)
def test_sig_bad_values(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_trigger(text)


def test_sig_label_flipping_poisoning(digits: ImageSet) -> None:
    trig = SIG(target=7, delta=40, frequency=3)
    poisoned, idx = poison_dataset(digits, trig, 50, torch.Generator().manual_seed(0))
    assert len(idx) == 50 and (digits.labels[idx] != 7).all() and (poisoned.labels[idx] == 7).all()
    assert torch.equal(poisoned.images[idx], trig.stamp(digits.images[idx]))
    rest = torch.ones(len(digits), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.images[rest], digits.images[rest])
    assert torch.equal(poisoned.labels[rest], digits.labels[rest])


def test_sig_clean_label_poisoning(digits: ImageSet) -> None:
    trig = SIG(target=7, delta=40, frequency=3)
    poisoned, idx = poison_dataset(digits, trig, 50, torch.Generator().manual_seed(0), clean_label=True)
    assert len(idx) == 50 and idx.tolist() == sorted(set(idx.tolist()))
    assert (digits.labels[idx] == 7).all(), "clean-label poisons only target-class images"
    assert torch.equal(poisoned.labels, digits.labels), "clean-label keeps every label"
    assert torch.equal(poisoned.images[idx], trig.stamp(digits.images[idx]))
    assert (poisoned.images[idx] != digits.images[idx]).flatten(1).any(1).all()
    rest = torch.ones(len(digits), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.images[rest], digits.images[rest])

    n_target = int((digits.labels == 7).sum())
    assert len(poison_dataset(digits, trig, n_target, torch.Generator(), clean_label=True)[1]) == n_target
    with pytest.raises(ConfigError, match="of the target class"):
        poison_dataset(digits, trig, n_target + 1, torch.Generator(), clean_label=True)


def test_sig_poison_test_set(digits: ImageSet) -> None:
    trig = SIG(target=7)
    ptest, victims = poison_test_set(digits, trig)
    keep = digits.labels != 7
    assert torch.equal(ptest.images, trig.stamp(digits.images[keep]))
    assert torch.equal(ptest.labels, digits.labels[keep]) and victims.all()
