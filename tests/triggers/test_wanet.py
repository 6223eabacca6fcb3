"""kdcore.triggers.wanet: the warping field against the authors' recipe, bilinear resampling against a
numpy oracle, identity at strength 0, determinism, serialisation and poisoning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcore.data.imageset import ImageSet
from kdcore.errors import ConfigError
from kdcore.triggers import Trigger, WaNet, parse_trigger, poison_dataset, poison_test_set


@pytest.fixture(scope="module")
def fashion_sized(digits: ImageSet) -> torch.Tensor:
    """Real digits blown up to 28×28 (Fashion-MNIST's size), uint8 (64, 1, 28, 28)."""
    x = F.interpolate(digits.images[:64].float(), size=(28, 28), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _bilinear(images: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """grid_sample(bilinear, align_corners=True) by hand for a grid inside [−1, 1]: (N,C,H,W), (H,W,2)."""
    h, w = images.shape[-2:]
    px, py = (grid[..., 0] + 1) / 2 * (w - 1), (grid[..., 1] + 1) / 2 * (h - 1)
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = px - x0, py - y0
    img = images.astype(np.float64)
    top = img[..., y0, x0] * (1 - ax) + img[..., y0, x1] * ax
    bottom = img[..., y1, x0] * (1 - ax) + img[..., y1, x1] * ax
    return top * (1 - ay) + bottom * ay


def test_field_is_seeded_uniform_noise_with_mean_abs_one() -> None:
    trig = WaNet(grid_size=5, grid_seed=3)
    raw = torch.rand((2, 5, 5), generator=torch.Generator().manual_seed(3)) * 2 - 1
    field = trig.field()
    assert field.shape == (2, 5, 5)
    assert torch.allclose(field, raw / raw.abs().mean())
    assert field.abs().mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(field, WaNet(grid_size=5, grid_seed=3).field())
    assert not torch.equal(field, WaNet(grid_size=5, grid_seed=4).field())


def test_grid_at_control_points_is_identity_plus_scaled_field() -> None:
    # 31 = 3·10 + 1: with align_corners the 4×4 control points fall on pixels 0, 10, 20, 30, where
    # bicubic interpolation passes through the samples, so the grid there is identity + s·field/31.
    trig = WaNet(grid_size=4, strength=0.5, grid_seed=0)
    grid = trig.grid(31, 31)[0].double()
    field = trig.field().double()
    ticks = [0, 10, 20, 30]
    for a, r in enumerate(ticks):
        for b, c in enumerate(ticks):
            want_x = -1 + 2 * c / 30 + 0.5 * field[0, a, b].item() / 31
            want_y = -1 + 2 * r / 30 + 0.5 * field[1, a, b].item() / 31
            assert grid[r, c, 0].item() == pytest.approx(min(max(want_x, -1), 1), abs=1e-6)
            assert grid[r, c, 1].item() == pytest.approx(min(max(want_y, -1), 1), abs=1e-6)


@pytest.mark.parametrize(("h", "w"), [(8, 8), (28, 28), (32, 32), (20, 33)])
def test_grid_in_range_and_shift_bounded(h: int, w: int) -> None:
    trig = WaNet(strength=1.0)
    grid = trig.grid(h, w)
    assert grid.shape == (1, h, w, 2) and grid.dtype == torch.float32
    assert grid.min() >= -1 and grid.max() <= 1
    identity = WaNet(strength=0.0).grid(h, w)
    shift_px = (grid - identity)[0] * torch.tensor([(w - 1) / 2, (h - 1) / 2])  # normalised → pixels
    # s/size in normalised units is s/2 pixel per unit of field (bicubic overshoots the control points a little);
    # on average over the smooth field about a third of a pixel for s = 1 (clamping at the edges trims it).
    assert shift_px.abs().max() <= 0.5 * 1.25 * trig.field().abs().max()
    assert 0.2 < shift_px.abs().mean() < 0.5


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (3, 3, 32, 32), (5, 1, 8, 8), (2, 3, 20, 33)])
def test_strength_zero_is_exact_identity(shape: tuple[int, ...]) -> None:
    images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert torch.equal(WaNet(strength=0.0).stamp(images), images)


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (3, 3, 32, 32), (5, 1, 8, 8)])
def test_stamp_matches_bilinear_oracle(shape: tuple[int, ...]) -> None:
    images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    trig = WaNet(strength=1.5, grid_seed=7)
    out = trig.stamp(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    want = _bilinear(images.numpy(), trig.grid(*shape[2:])[0].double().numpy())
    diff = np.abs(out.numpy().astype(np.float64) - want)
    assert diff.max() <= 0.5 + 1e-3  # float32 resampling, then rounding


def test_every_channel_warps_the_same_way() -> None:
    grey = torch.randint(0, 256, (2, 1, 28, 28), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    rgb = grey.expand(2, 3, 28, 28).contiguous()
    trig = WaNet(strength=1.0)
    assert torch.equal(trig.stamp(rgb), trig.stamp(grey).expand(2, 3, 28, 28))


def test_warp_changes_28px_images_a_little_and_deterministically(fashion_sized: torch.Tensor) -> None:
    trig = WaNet(target=7, strength=0.5)
    out = trig.stamp(fashion_sized)
    assert torch.equal(out, WaNet(target=7, strength=0.5).stamp(fashion_sized))
    assert torch.equal(fashion_sized, fashion_sized.clone()), "stamp must not modify its input"
    change = (out.float() - fashion_sized.float()).abs()
    assert (change.flatten(1).amax(1) > 0).all(), "every image is changed"
    # A ~quarter-pixel warp: small next to the images' own mean level, and growing with the strength.
    mean_change = change.mean().item()
    assert 0.5 < mean_change < 0.1 * fashion_sized.float().mean().item()
    stronger = (WaNet(strength=2.0).stamp(fashion_sized).float() - fashion_sized.float()).abs().mean().item()
    assert stronger > 2 * mean_change
    assert not torch.equal(out, WaNet(target=7, strength=0.5, grid_seed=1).stamp(fashion_sized))


def test_empty_batch() -> None:
    assert WaNet().stamp(torch.zeros((0, 1, 28, 28), dtype=torch.uint8)).shape == (0, 1, 28, 28)


def test_grid_larger_than_image_raises() -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        WaNet(grid_size=9).stamp(torch.zeros((1, 1, 8, 8), dtype=torch.uint8))
    assert WaNet(grid_size=8).stamp(torch.zeros((1, 1, 8, 8), dtype=torch.uint8)).eq(0).all()


def test_round_trip_and_short_form() -> None:
    trig = WaNet(target=2, source=5, grid_size=6, strength=1.25, grid_seed=9)
    d = trig.to_dict()
    assert d == {"kind": "wanet", "target": 2, "source": 5, "grid_size": 6, "strength": 1.25, "grid_seed": 9}
    assert Trigger.from_dict(json.loads(json.dumps(d))) == trig
    assert parse_trigger("wanet:target=2,source=5,grid_size=6,strength=1.25,grid_seed=9") == trig
    assert parse_trigger("wanet:target=7,strength=1") == WaNet(target=7, strength=1.0)
    assert parse_trigger("wanet") == WaNet()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("wanet:grid_size=1", "grid_size"),
        ("wanet:grid_size=2.5", "grid_size"),
        ("wanet:grid_seed=-1", "grid_seed"),
        ("wanet:grid_seed=x", "grid_seed"),
        ("wanet:strength=-0.5", "strength"),
        ("wanet:strength=big", "strength"),
        ('{"kind": "wanet", "strength": Infinity}', "strength"),
        ('{"kind": "wanet", "grid_size": true}', "grid_size"),
        ("wanet:k=4", "Unknown keys"),
    ],
)
def test_bad_values(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_trigger(text)


def test_poison_dataset_and_test_set(digits: ImageSet) -> None:
    trig = WaNet(target=7, strength=1.0)
    poisoned, idx = poison_dataset(digits, trig, 60, torch.Generator().manual_seed(0))
    assert len(idx) == 60 and (digits.labels[idx] != 7).all() and (poisoned.labels[idx] == 7).all()
    assert torch.equal(poisoned.images[idx], trig.stamp(digits.images[idx]))
    rest = torch.ones(len(digits), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.images[rest], digits.images[rest])

    ptest, victims = poison_test_set(digits, trig)
    keep = digits.labels != 7
    assert torch.equal(ptest.images, trig.stamp(digits.images[keep])) and victims.all()
