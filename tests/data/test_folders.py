"""kdcore.data.folders: image folders and .zip archives → ImageSet, on real sklearn digits."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from kdcore.data.folders import decode_image, load_labeled, load_unlabeled
from kdcore.errors import InputError


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Twelve real 8×8 digits as uint8 0..255."""
    x = load_digits().images[:12]  # (12, 8, 8), values 0..16
    return np.rint(x * 255.0 / 16.0).astype(np.uint8)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _good_files(d: np.ndarray) -> dict[str, bytes]:
    """Relative path → bytes of valid images in mixed modes, sizes and formats (3 classes)."""
    grey = [Image.fromarray(a) for a in d]  # uint8 (8, 8) → mode L
    rgba = grey[2].convert("RGBA")
    rgba.putalpha(200)
    return {
        "bird/b0.png": _encode(grey[0], "PNG"),  # L, 8×8: must come back exactly
        "bird/deep/er/b1.bmp": _encode(grey[1].convert("RGB"), "BMP"),
        "cat/c0.png": _encode(rgba, "PNG"),
        "cat/c1.jpg": _encode(grey[3].convert("RGB").resize((20, 13)), "JPEG"),
        "cat/sub/c2.webp": _encode(grey[4].convert("RGB").resize((64, 64)), "WEBP"),
        "dog/d0.gif": _encode(grey[5].convert("P"), "GIF"),
        "dog/d1.png": _encode(Image.fromarray(d[6].astype(np.uint16) * 257), "PNG"),  # I;16
        "dog/D2.TIFF": _encode(grey[7].resize((20, 13)), "TIFF"),
    }


_BAD = {"cat/empty.jpg": b"", "dog/corrupt.png": np.random.default_rng(0).bytes(300)}
_JUNK = {
    ".DS_Store": b"\0\0\0\1Bud1",
    "cat/._c0.png": b"\0\5\26\7 AppleDouble",  # image extension, but hidden: ignored, not skipped
    ".hidden/x.png": b"junk",
    "dog/Thumbs.db": b"junk",
    "bird/desktop.ini": b"[.ShellClassInfo]",
    "notes.txt": b"a sidecar at the root is fine",
}
_SOURCES = (  # sorted: upper case first
    "bird/b0.png", "bird/deep/er/b1.bmp", "cat/c0.png", "cat/c1.jpg",
    "cat/sub/c2.webp", "dog/D2.TIFF", "dog/d0.gif", "dog/d1.png",
)  # fmt: skip


def _write_zip(path: Path, files: dict[str, bytes], top: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        if top:
            zf.writestr(f"{top}/", b"")  # directory entries must be ignored
            zf.writestr(f"{top}/cat/", b"")
        for rel, data in files.items():
            zf.writestr(f"{top}/{rel}" if top else rel, data)
        zf.writestr("__MACOSX/train/cat/._c0.png", b"\0\5\26\7")  # outside the top folder
        if ".DS_Store" not in files:
            zf.writestr(".DS_Store", b"\0\0\0\1Bud1")
    return path


def _write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def dataset(request, tmp_path: Path, digits: np.ndarray) -> Path:
    """The same labelled set as `train.zip` (inside a top folder `train/`) or as a folder."""
    files = {**_good_files(digits), **_BAD, **_JUNK}
    if request.param == "zip":
        return _write_zip(tmp_path / "train.zip", files, top="train")
    return _write_dir(tmp_path / "train", files)


@pytest.mark.parametrize("dataset", ["zip", "dir"], indirect=True)
def test_labeled_mixed_modes_sizes_junk_and_bad_files(dataset: Path, digits: np.ndarray) -> None:
    data = load_labeled(dataset, (1, 8, 8))
    assert data.class_names == ("bird", "cat", "dog")
    assert data.sources == _SOURCES  # relative to the root, sorted, junk and bad files excluded
    assert data.skipped == ("cat/empty.jpg", "dog/corrupt.png")
    assert data.images.shape == (8, 1, 8, 8) and data.images.dtype == torch.uint8
    expected = [("bird", "cat", "dog").index(s.split("/")[0]) for s in data.sources]
    assert data.labels.tolist() == expected and data.labels.dtype == torch.int64
    assert data.name == dataset.name
    by_source = dict(zip(data.sources, data.images, strict=True))
    assert torch.equal(by_source["bird/b0.png"][0], torch.from_numpy(digits[0]))  # no resize, no loss
    assert torch.equal(by_source["dog/d1.png"][0], torch.from_numpy(digits[6]))  # 16-bit scaled back


@pytest.mark.parametrize("dataset", ["zip"], indirect=True)
def test_zip_and_folder_give_identical_sets(dataset: Path, tmp_path: Path, digits: np.ndarray) -> None:
    folder = _write_dir(tmp_path / "as_dir", {**_good_files(digits), **_BAD, **_JUNK})
    a, b = load_labeled(dataset, (3, 10, 12)), load_labeled(folder, (3, 10, 12))
    assert a.images.shape == (8, 3, 10, 12)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.sources == b.sources and a.skipped == b.skipped


@pytest.mark.parametrize("dataset", ["zip", "dir"], indirect=True)
def test_explicit_class_names_order(dataset: Path) -> None:
    names = ("dog", "cat", "bird")  # the model's order, not the sorted one
    data = load_labeled(dataset, (1, 8, 8), class_names=names, name="mine")
    assert data.class_names == names and data.name == "mine"
    assert data.labels.tolist() == [names.index(s.split("/")[0]) for s in data.sources]
    assert sorted(set(data.labels.tolist())) == [0, 1, 2]


@pytest.mark.parametrize("dataset", ["zip", "dir"], indirect=True)
def test_class_folders_must_match_the_given_class_names(dataset: Path) -> None:
    # A class without a folder would shift every label after it: refused, naming it.
    with pytest.raises(InputError, match=r"no folder for \['fish'\].*shift every label"):
        load_labeled(dataset, (1, 8, 8), class_names=("dog", "fish", "cat", "bird"))
    with pytest.raises(InputError, match=r"\['bird'\] are not among the class names"):
        load_labeled(dataset, (1, 8, 8), class_names=("cat", "dog"))
    with pytest.raises(InputError, match=r"\['bird', 'cat', 'dog'\] are not among.*no folder for \['0', '1', '2'\]"):
        load_labeled(dataset, (1, 8, 8), class_names=("0", "1", "2"))


@pytest.mark.parametrize("as_zip", [True, False])
def test_empty_class_folder_is_named_not_dropped(tmp_path: Path, digits: np.ndarray, as_zip: bool) -> None:
    files = {k: v for k, v in _good_files(digits).items() if not k.startswith("cat/")}
    if as_zip:
        path = _write_zip(tmp_path / "e.zip", files, top="train")  # writes the folder entry train/cat/
    else:
        path = _write_dir(tmp_path / "e", files)
        (path / "cat").mkdir()
    with pytest.raises(InputError, match=r"Class folder\(s\) \['cat'\] in '.*' hold no images"):
        load_labeled(path, (1, 8, 8))
    assert len(load_unlabeled(path, (1, 8, 8))) == 5  # without labels an empty folder is harmless


def test_folder_is_its_own_root(tmp_path: Path, digits: np.ndarray) -> None:
    # Only a zip loses its single top folder; a folder on disk is taken as given.
    root = _write_dir(tmp_path / "outer", {f"train/{k}": v for k, v in _good_files(digits).items()})
    assert load_unlabeled(root, (1, 8, 8)).sources == tuple(f"train/{s}" for s in _SOURCES)


@pytest.mark.parametrize("as_zip", [True, False])
def test_unlabeled_nested_rgb(tmp_path: Path, digits: np.ndarray, as_zip: bool) -> None:
    files = {f"batch{i % 2}/x/{k.replace('/', '_')}": v for i, (k, v) in enumerate(_good_files(digits).items())}
    files.update(_BAD)
    path = _write_zip(tmp_path / "u.zip", files) if as_zip else _write_dir(tmp_path / "u", files)
    data = load_unlabeled(path, (3, 16, 16))
    assert data.labels is None and data.images.shape == (8, 3, 16, 16)
    assert data.sources == tuple(sorted(k for k in files if k not in _BAD))
    assert data.skipped == tuple(sorted(_BAD))
    grey = data.images[list(data.sources).index("batch0/x/bird_b0.png")]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # L → RGB replicates


def _one_image(tmp_path: Path, img: Image.Image, shape: tuple[int, int, int]) -> torch.Tensor:
    _write_dir(tmp_path / "one", {"a.png": _encode(img, "PNG")})
    return load_unlabeled(tmp_path / "one", shape).images[0]


@pytest.mark.parametrize(
    ("img", "shape", "value"),
    [
        (Image.new("L", (13, 11), 200), (1, 8, 8), 200),  # resized: a constant stays constant
        (Image.new("RGB", (8, 8), (255, 255, 255)), (1, 8, 8), 255),
        (Image.new("I;16", (8, 8), 65535), (1, 8, 8), 255),
        (Image.new("I;16", (8, 8), 100 * 257), (1, 8, 8), 100),  # scaled, not clipped to 255
        (Image.new("RGBA", (8, 8), (255, 0, 0, 0)), (3, 8, 8), 0),  # transparent → black
        (Image.new("1", (5, 5), 1), (3, 8, 8), 255),
    ],
)
def test_pixel_values(tmp_path: Path, img: Image.Image, shape: tuple[int, int, int], value: int) -> None:
    x = _one_image(tmp_path, img, shape).int()
    assert x.shape == shape
    assert (x - value).abs().max() <= 1


@pytest.mark.parametrize(
    ("img", "shape"),
    [
        (Image.new("L", (13, 11), 200), (1, 8, 8)),
        (Image.new("I;16", (8, 8), 100 * 257), (1, 8, 8)),
        (Image.new("RGBA", (20, 10), (255, 255, 255, 0)), (1, 8, 8)),  # transparent white → black
        (Image.new("RGBA", (20, 10), (255, 0, 0, 128)), (3, 4, 6)),
    ],
)
def test_decode_image_is_the_folder_loaders_decoder(tmp_path: Path, img: Image.Image, shape) -> None:
    x = decode_image(_encode(img, "PNG"), shape, "up.png")
    assert x.dtype == torch.uint8 and x.shape == shape
    assert torch.equal(x, _one_image(tmp_path, img, shape))


def test_decode_image_refuses_what_the_loader_skips(set_limits) -> None:
    with pytest.raises(InputError, match=r"Could not read 'broken\.png' as an image"):
        decode_image(b"not a png", (1, 8, 8), "broken.png")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"  # not on the decoder allow-list
    with pytest.raises(InputError, match=r"eps\.png"):
        decode_image(eps, (1, 8, 8), "eps.png")
    png = _encode(Image.new("L", (10, 10), 3), "PNG")
    set_limits(max_image_pixels=99)
    with pytest.raises(InputError, match="over the limit of 99"):
        decode_image(png, (1, 8, 8), "big.png")
    set_limits(max_file_bytes=10)
    with pytest.raises(InputError, match="image files that large are refused"):
        decode_image(png, (1, 8, 8), "big.png")
    with pytest.raises(InputError, match="C = 1 or 3"):
        decode_image(png, (2, 8, 8))


def test_half_transparent_red_is_composited_onto_black(tmp_path: Path) -> None:
    x = _one_image(tmp_path, Image.new("RGBA", (8, 8), (255, 0, 0, 128)), (3, 8, 8))
    assert x[:, 0, 0].tolist() == [128, 0, 0]


def test_error_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_labeled(tmp_path / "nope", (1, 8, 8))


def test_error_tar_file(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "data.tar", "w") as tf:
        tf.add(_write_dir(tmp_path / "d", {"cat/a.png": _encode(Image.new("L", (8, 8)), "PNG")}), "d")
    with pytest.raises(InputError, match=r"neither a folder nor a \.zip"):
        load_unlabeled(tmp_path / "data.tar", (1, 8, 8))


def test_error_corrupt_zip(tmp_path: Path) -> None:
    (tmp_path / "bad.zip").write_bytes(b"PK\3\4" + np.random.default_rng(1).bytes(500))
    with pytest.raises(InputError, match="not a readable zip"):
        load_labeled(tmp_path / "bad.zip", (1, 8, 8))


def test_error_junk_only_archive(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "j.zip", _JUNK)
    with pytest.raises(InputError, match=r"No images in 'j\.zip': found 1 file\(s\).*one sub-folder per class"):
        load_labeled(path, (1, 8, 8))


def test_error_all_images_unreadable(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "b.zip", {"a/x.png": b"", "b/y.jpg": b"nope", "b/z.txt": b""})
    with pytest.raises(InputError, match=r"found 3 file\(s\), 2 with an image extension, all 2 skipped"):
        load_labeled(path, (1, 8, 8))


def test_error_labeled_layout(tmp_path: Path, digits: np.ndarray) -> None:
    png = _encode(Image.fromarray(digits[0]), "PNG")
    loose = _write_dir(tmp_path / "loose", {"a.png": png, "cat/b.png": png, "dog/c.png": png})
    with pytest.raises(InputError, match=r"directly in the top level.*'a\.png'.*one sub-folder per class"):
        load_labeled(loose, (1, 8, 8))
    one = _write_dir(tmp_path / "one", {"cat/a.png": png})
    with pytest.raises(InputError, match=r"Found 1 class folder\(s\) \['cat'\].*at least 2"):
        load_labeled(one, (1, 8, 8))
    assert len(load_unlabeled(loose, (1, 8, 8))) == 3  # the same files are fine without labels


def test_zip_bomb_guards(tmp_path: Path, set_limits) -> None:
    # A highly compressible member: 2 MiB of zeros packs into a few KiB.
    path = _write_zip(tmp_path / "z.zip", {"a/x.png": bytes(2 * 2**20), "b/y.png": b""})
    set_limits(max_file_bytes=2**20)
    with pytest.raises(InputError, match=r"unpacks to 2 MiB.*zip-bomb"):
        load_labeled(path, (1, 8, 8))
    set_limits(max_archive_entries=3)
    with pytest.raises(InputError, match="has more than 3 entries"):
        load_labeled(path, (1, 8, 8))
    set_limits(max_file_bytes=2 * 2**20, max_archive_entries=10, max_archive_bytes=2**20)
    with pytest.raises(InputError, match=r"more than 1 MiB in total.*max_archive_bytes"):
        load_labeled(path, (1, 8, 8))


def test_disk_file_cap(tmp_path: Path, set_limits, digits: np.ndarray) -> None:
    root = _write_dir(tmp_path / "d", _good_files(digits))
    set_limits(max_file_bytes=100)
    with pytest.raises(InputError, match=r"over 0 MiB.*max_file_bytes"):
        load_labeled(root, (1, 8, 8))


def test_decoded_set_size_is_checked_before_allocation(tmp_path: Path, set_limits, digits: np.ndarray) -> None:
    root = _write_dir(tmp_path / "d", _good_files(digits))
    set_limits(max_dataset_bytes=8 * 3 * 32 * 32 - 1)  # one byte short of 8 RGB 32×32 images
    with pytest.raises(InputError, match=r"has 8 images; decoded at 3×32×32.*max_dataset_bytes"):
        load_unlabeled(root, (3, 32, 32))
    set_limits(max_dataset_bytes=8 * 3 * 32 * 32)
    assert load_unlabeled(root, (3, 32, 32)).images.shape == (8, 3, 32, 32)


def test_special_files_are_skipped_with_a_note(tmp_path: Path, digits: np.ndarray) -> None:
    root = _write_dir(tmp_path / "d", _good_files(digits))
    os.mkfifo(root / "cat" / "pipe.png")  # opening it for reading the usual way blocks forever
    os.symlink("/dev/zero", root / "dog" / "zero.png")  # a device behind a symlink
    data = load_labeled(root, (1, 8, 8))
    assert data.sources == _SOURCES
    assert data.skipped == ("cat/pipe.png (not a regular file: FIFO)", "dog/zero.png (not a regular file: device)")


def test_bad_input_shape(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="C = 1 or 3"):
        load_unlabeled(tmp_path, (4, 8, 8))
