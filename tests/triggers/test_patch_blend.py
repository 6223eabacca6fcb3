"""kdcore.triggers Patch and Blend against hand-stamped oracles.

Each expected image is built here with numpy: x' = rint((1 − w)·x + w·p) in float64, w = alpha·m/255
(np.rint and torch.round both round half to even). Where w is 0 or 1 everywhere, or the sum cannot
land on a half (0.8·x + 0.2·p has a fractional part in steps of 0.2), the comparison is exact;
otherwise within 1 grey level (the engine computes in float32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore.data.folders import decode_image
from kdcore.errors import ConfigError, InputError
from kdcore.triggers import Blend, Patch, parse_trigger
from kdcore.triggers.badnets import LOCATIONS
from tests.triggers.conftest import save_png

# (location) → top-left (row, col) of a 4×5 (rows × cols) patch, margin 1, in a 12×10 image, by hand.
BOXES_12x10 = {
    "bottom-right": (7, 4),
    "bottom-center": (7, 2),
    "bottom-left": (7, 1),
    "top-right": (1, 4),
    "top-left": (1, 1),
    "center": (4, 2),
}


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def _png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


def _oracle(x: torch.Tensor, p: np.ndarray, m: np.ndarray, row: int, col: int) -> np.ndarray:
    """x uint8 (N, C, H, W); p (C, h, w) in 0..255; m (h, w) weights in 0..1."""
    out = x.numpy().astype(np.float64)
    h, w = m.shape
    region = out[:, :, row : row + h, col : col + w]
    out[:, :, row : row + h, col : col + w] = np.rint((1 - m) * region + m * p)
    return np.clip(out, 0, 255).astype(np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) → (1, h, w): ITU-R 601-2 luma, the grey of a colour pattern on grey inputs."""
    return np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)[None]


def test_every_location_has_a_hand_computed_box() -> None:
    assert set(BOXES_12x10) == set(LOCATIONS)


@pytest.mark.parametrize("location", sorted(BOXES_12x10))
def test_opaque_rgb_patch_is_pasted_at_each_location(location: str, trigger_files) -> None:
    trig = Patch(image=str(trigger_files["rgb"]), location=location)  # no alpha, no mask: opaque
    x = _images(3, 3, 12, 10)
    row, col = BOXES_12x10[location]
    assert trig.box(12, 10) == (row, col)
    expected = x.clone()
    expected[:, :, row : row + 4, col : col + 5] = torch.from_numpy(_png(trigger_files["rgb"])).permute(2, 0, 1)
    assert torch.equal(trig.stamp(x), expected)
    assert torch.equal(x, _images(3, 3, 12, 10)), "stamp must not modify its input"


@pytest.mark.parametrize("location", sorted(BOXES_12x10))
def test_rgba_patch_uses_its_alpha_channel_as_mask(location: str, trigger_files) -> None:
    rgba = _png(trigger_files["rgba"]).astype(np.float64)  # (3, 3, 4), alpha 0 / 128 / 255
    trig = Patch(image=str(trigger_files["rgba"]), location=location, margin=2)
    x = _images(2, 3, 10, 10, seed=1)
    vertical, _, horizontal = location.partition("-")
    row = {"bottom": 10 - 2 - 3, "top": 2, "center": (10 - 3) // 2}[vertical]
    col = {"right": 10 - 2 - 3, "left": 2, "center": (10 - 3) // 2, "": (10 - 3) // 2}[horizontal]
    expected = _oracle(x, rgba[..., :3].transpose(2, 0, 1), rgba[..., 3] / 255, row, col)
    got = trig.stamp(x).numpy()
    assert np.abs(got.astype(int) - expected).max() <= 1
    binary = np.ones((10, 10), bool)
    binary[row + 1, col + 1] = False  # the one pixel of alpha 128
    assert np.array_equal(got[:, :, binary], expected[:, :, binary])
    assert not np.array_equal(got, x.numpy())


def test_rgba_patch_on_grey_images_uses_the_patterns_luma(trigger_files) -> None:
    rgba = _png(trigger_files["rgba"]).astype(np.float64)
    trig = Patch(image=str(trigger_files["rgba"]), location="top-left", margin=0)
    x = _images(2, 1, 8, 8, seed=2)
    expected = _oracle(x, _luma(rgba[..., :3]), rgba[..., 3] / 255, 0, 0)
    assert np.abs(trig.stamp(x).numpy().astype(int) - expected).max() <= 1


def test_separate_mask_overrides_the_alpha_channel(trigger_files, tmp_path) -> None:
    mask = np.array([[0, 255, 0], [255, 255, 255], [0, 255, 0]], np.uint8)  # a plus, unlike the alpha
    mask_path = save_png(tmp_path / "plus.png", mask, "L")
    trig = Patch(image=str(trigger_files["rgba"]), mask=str(mask_path), x=4, y=1)
    x = _images(2, 3, 8, 8, seed=3)
    rgb = _png(trigger_files["rgba"])[..., :3].astype(np.float64).transpose(2, 0, 1)
    assert torch.equal(trig.stamp(x), torch.from_numpy(_oracle(x, rgb, mask / 255, 1, 4)))  # binary: exact


def test_grey_mask_weights_each_pixel(trigger_files) -> None:
    trig = Patch(image=str(trigger_files["rgb"]), mask=str(trigger_files["mask"]), location="center", margin=0)
    x = _images(2, 3, 12, 10, seed=4)
    rgb = _png(trigger_files["rgb"]).astype(np.float64).transpose(2, 0, 1)
    expected = _oracle(x, rgb, _png(trigger_files["mask"]) / 255, 4, 2)
    assert np.abs(trig.stamp(x).numpy().astype(int) - expected).max() <= 1


@pytest.mark.parametrize(("x", "y"), [(0, 0), (2, 5), (5, 5)])
def test_explicit_x_y_is_the_top_left_corner(x: int, y: int, trigger_files) -> None:
    trig = Patch(image=str(trigger_files["white3"]), x=x, y=y)
    out = trig.stamp(torch.zeros((1, 1, 8, 8), dtype=torch.uint8))[0, 0]
    expected = torch.zeros((8, 8), dtype=torch.uint8)
    expected[y : y + 3, x : x + 3] = 255
    assert torch.equal(out, expected)


def test_peer_style_3x3_patch_at_weight_0_2_can_be_written(trigger_files, digits) -> None:
    trig = parse_trigger(f"patch:image={trigger_files['white3']},location=bottom-right,margin=0,alpha=0.2,target=0")
    assert isinstance(trig, Patch) and trig.alpha == 0.2 and trig.target == 0
    x = digits.images[:50]  # (50, 1, 8, 8)
    expected = x.numpy().astype(np.float64)
    expected[:, :, 5:8, 5:8] = np.rint(0.8 * expected[:, :, 5:8, 5:8] + 0.2 * 255)
    assert np.array_equal(trig.stamp(x).numpy(), expected.astype(np.uint8))  # never a half: exact
    rgb = _images(4, 3, 8, 8, seed=5)
    expected = rgb.numpy().astype(np.float64)
    expected[:, :, 5:8, 5:8] = np.rint(0.8 * expected[:, :, 5:8, 5:8] + 51)
    assert np.array_equal(trig.stamp(rgb).numpy(), expected.astype(np.uint8))


def test_blend_same_size_pattern_at_alpha_0_2(tmp_path) -> None:
    p = np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    trig = Blend(image=str(save_png(tmp_path / "p.png", p, "RGB")), alpha=0.2, target=1)
    x = _images(3, 3, 8, 8, seed=6)
    expected = np.rint(0.8 * x.numpy().astype(np.float64) + 0.2 * p.transpose(2, 0, 1).astype(np.float64))
    assert np.array_equal(trig.stamp(x).numpy(), expected.astype(np.uint8))  # never a half: exact


def test_blend_resizes_bilinearly_by_hand(tmp_path) -> None:
    # 4 wide → 8 wide: output column j samples input position (j + 0.5)/2 − 0.5, so the edge
    # between 0 and 200 becomes ..., 0, 0.75·0 + 0.25·200 = 50, 0.25·0 + 0.75·200 = 150, 200, ...
    p = np.array([[0, 0, 200, 200]] * 4, np.uint8)
    trig = Blend(image=str(save_png(tmp_path / "edge.png", p, "L")), alpha=1.0)
    out = trig.stamp(torch.zeros((1, 1, 8, 8), dtype=torch.uint8))[0, 0]
    assert out.tolist() == [[0, 0, 0, 50, 150, 200, 200, 200]] * 8


def test_blend_resizes_as_the_dataset_loaders_do(trigger_files) -> None:
    trig = Blend(image=str(trigger_files["logo"]), alpha=1.0)  # 16×16 → 8×8: antialiased shrink
    data = trigger_files["logo"].read_bytes()
    for shape in ((3, 8, 8), (1, 8, 8), (3, 24, 20)):
        out = trig.stamp(torch.zeros((1, *shape), dtype=torch.uint8))[0]
        assert torch.equal(out, decode_image(data, shape))


def test_blend_uses_the_alpha_channel(trigger_files) -> None:
    rgba = _png(trigger_files["rgba"]).astype(np.float64)
    trig = Blend(image=str(trigger_files["rgba"]), alpha=0.5)
    x = _images(2, 3, 3, 3, seed=7)
    expected = _oracle(x, rgba[..., :3].transpose(2, 0, 1), 0.5 * rgba[..., 3] / 255, 0, 0)
    assert np.abs(trig.stamp(x).numpy().astype(int) - expected).max() <= 1


def test_files_are_pinned_and_round_trip(trigger_files, file_examples) -> None:
    trig = file_examples["patch"]
    d = trig.to_dict()
    assert d["image"] == str(trigger_files["rgb"].resolve()) and len(d["image_sha256"]) == 64
    assert d["mask"] == str(trigger_files["mask"].resolve()) and len(d["mask_sha256"]) == 64
    assert "pattern" not in d and "weight" not in d  # files by path and hash, nothing decoded inline
    again = parse_trigger(__import__("json").dumps(d))
    assert again == trig and torch.equal(again.stamp(_images(1, 3, 8, 8)), trig.stamp(_images(1, 3, 8, 8)))


def test_a_changed_file_is_a_clear_error(tmp_path) -> None:
    path = save_png(tmp_path / "p.png", np.full((2, 2), 9), "L")
    d = Patch(image=str(path)).to_dict()
    save_png(path, np.full((2, 2), 10), "L")
    with pytest.raises(ConfigError, match="changed since this trigger was written"):
        Patch(**{k: v for k, v in d.items() if k != "kind"})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("patch:target=1", "needs its patch image"),
        ("patch:image={rgb},x=1", "x and y together"),
        ("patch:image={rgb},x=1,y=1,location=center", "not both"),
        ("patch:image={rgb},x=-1,y=0", "≥ 0"),
        ("patch:image={rgb},location=middle", "location"),
        ("patch:image={rgb},alpha=0", "alpha"),
        ("blend:image={rgb},alpha=1.5", "alpha"),
        ("patch:image={rgb},image_sha256=abc", "SHA-256"),
    ],
)
def test_bad_values(text: str, match: str, trigger_files) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_trigger(text.format(rgb=trigger_files["rgb"]))


def test_a_patch_that_does_not_fit(trigger_files) -> None:
    trig = Patch(image=str(trigger_files["rgb"]), x=6, y=0)  # 4×5 at column 6 of an 8-wide image
    with pytest.raises(ConfigError, match=r"4×5 patch \(rgb.png\) at x=6, y=0 does not fit in a 8×8 image"):
        trig.check_input((3, 8, 8))
    with pytest.raises(ConfigError, match="does not fit"):
        Patch(image=str(trigger_files["logo"])).stamp(_images(1, 3, 8, 8))


def test_unreadable_and_truncated_files_are_one_line_errors(trigger_files, tmp_path, monkeypatch) -> None:
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(trigger_files["logo"].read_bytes()[:60])
    with pytest.raises(InputError, match=r"Could not read 'cut\.png' as an image") as e:
        Blend(image=str(truncated))
    assert "\n" not in str(e.value)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("kdcore.triggers.pattern.os.open", denied)  # root reads any file: simulate a 0600 one
    with pytest.raises(ConfigError, match=r"Cannot read the trigger patch image .*: Permission denied$"):
        Patch(image=str(trigger_files["rgb"]))


# --- a full-size pattern with a mask (the form attack toolkits give), and what to write instead ---


def _full_size(tmp_path, h: int = 28, w: int = 28) -> tuple[str, str, np.ndarray, np.ndarray]:
    """An h×w pattern, zero except a 3×3 patch of 200 at rows 20..22, cols 23..25, and its h×w mask."""
    pattern, mask = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    pattern[20:23, 23:26], mask[20:23, 23:26] = 200, 255
    return (
        str(save_png(tmp_path / "pattern.png", pattern, "L")),
        str(save_png(tmp_path / "mask.png", mask, "L")),
        pattern,
        mask,
    )


@pytest.mark.parametrize("where", ["", ",location=top-left,margin=3", ",margin=1", ",x=0,y=0"])
def test_a_full_size_pattern_with_a_mask_goes_at_the_origin_unasked(tmp_path, where: str) -> None:
    image, mask, pattern, m = _full_size(tmp_path)
    trig = parse_trigger(f"patch:image={image},mask={mask},target=1{where}")
    x = _images(4, 1, 28, 28)
    trig.check_input((1, 28, 28))
    want = np.where(m == 255, pattern, x.numpy())  # the pattern where the mask is white, the input elsewhere
    assert np.array_equal(trig.stamp(x).numpy(), want)
    assert trig.fills(28, 28) == ("x=" not in where)
    rgb = trig.stamp(_images(2, 3, 28, 28))  # colour inputs get the pattern's grey on each channel
    assert rgb[:, :, 20:23, 23:26].eq(200).all()


def test_a_pattern_that_does_not_fit_says_what_to_write_instead(tmp_path, trigger_files) -> None:
    """Each message names a setting that fits, and writing it makes the trigger fit."""
    seven = str(save_png(tmp_path / "seven.png", np.full((7, 7), 255), "L"))
    with pytest.raises(
        ConfigError, match=r"7×7 patch \(seven.png\) with margin 2 .* a margin of at most 1 fits \(margin=1\)"
    ):
        parse_trigger(f"patch:image={seven},margin=2").check_input((1, 8, 8))
    parse_trigger(f"patch:image={seven},margin=1").check_input((1, 8, 8))
    rgb = trigger_files["rgb"]  # 4×5 (rows × cols)
    with pytest.raises(
        ConfigError, match=r"at x=6, y=0 does not fit in a 8×8 image: .* x ≤ 3 and y ≤ 4 \(e\.g\. x=3,y=0\)"
    ):
        parse_trigger(f"patch:image={rgb},x=6,y=0").check_input((3, 8, 8))
    parse_trigger(f"patch:image={rgb},x=3,y=0").check_input((3, 8, 8))
    image, mask, _, _ = _full_size(tmp_path, 28, 28)
    for where in ("", ",x=1,y=0"):  # a full-size pattern on a smaller input: nothing to place, say so
        with pytest.raises(ConfigError, match=r"28×28 patch .* larger than the image .* at most 8×8"):
            parse_trigger(f"patch:image={image},mask={mask}{where}").check_input((1, 8, 8))
    with pytest.raises(
        ConfigError, match=r"at x=1, y=0 does not fit in a 28×28 image: .* x ≤ 0 and y ≤ 0 \(e\.g\. x=0,y=0\)"
    ):
        parse_trigger(f"patch:image={image},mask={mask},x=1,y=0").check_input((1, 28, 28))
