"""Load a user's images from a folder or a .zip archive into an `ImageSet`.

Two layouts:

    load_labeled     root/<class>/.../<image>    one sub-folder per class (torchvision's ImageFolder)
    load_unlabeled   root/.../<image>            any layout, searched recursively

Steps:
1. List the files: a folder is walked on disk; a zip is read member by member, never extracted.
2. Drop OS junk: `__MACOSX/`, anything with a path part starting with ".", Thumbs.db, desktop.ini.
3. For a zip whose images all sit in one top folder (`train.zip` → `train/cat/...`), that folder
   is the root. A folder given on disk is always its own root.
4. Keep files with an image extension, sorted by relative path, so the order is deterministic.
5. Decode each with PIL, flatten alpha onto black, bring 16-bit and float images to 0..255,
   convert to L (C = 1) or RGB (C = 3) and resize to (H, W) → uint8 (N, C, H, W).
   Files with an image extension that cannot be decoded are listed in `ImageSet.skipped`.
   `decode_image` is the same decoder for one file's bytes (the dashboard's uploads).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdcore.data.imageset import ImageSet
from kdcore.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Only these PIL decoders may run, whatever the extension claims: a ".png" that really is an
# EPS file would otherwise hand the bytes to Ghostscript.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF", "GIF")
_JUNK_NAMES = {"thumbs.db", "desktop.ini"}
MAX_FILE_BYTES = 64 * 2**20  # per image file, uncompressed (zip-bomb guard)
MAX_ZIP_MEMBERS = 500_000
MAX_PIXELS = 50_000_000  # larger images are skipped before their pixels are decoded

LABELED_LAYOUT = "one sub-folder per class with the images inside (e.g. cat/001.png, dog/002.png)"
UNLABELED_LAYOUT = "image files (.png, .jpg, ...) in any folder layout"
# What PIL and zipfile raise on a corrupt, truncated or hostile file: that file is skipped.
_UNREADABLE = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    zipfile.BadZipFile,
    Image.DecompressionBombError,
)


@dataclass(frozen=True)
class _File:
    rel: str  # posix path relative to the dataset root, e.g. "cat/001.png"
    read: Callable[[], bytes]


def load_labeled(
    path: str | os.PathLike,
    input_shape: tuple[int, int, int],
    class_names: Sequence[str] | None = None,
    name: str = "",
) -> ImageSet:
    """Load `root/<class>/.../<image>` from a folder or a .zip; label = index of the class folder.

    Classes are the sorted folder names, or `class_names` in the given order (every folder must
    be one of them; a listed class without a folder simply has no images).
    """
    shape = _check_shape(input_shape)
    root = Path(path)
    with _list_files(root) as files:
        images = _image_files(files, root, LABELED_LAYOUT)
        at_root = [f.rel for f in images if "/" not in f.rel]
        if at_root:
            raise InputError(
                f"{len(at_root)} image(s) sit directly in the top level of '{root.name}' "
                f"(e.g. '{at_root[0]}'), so their class is unknown; expected {LABELED_LAYOUT}. "
                "Move each image into the folder of its class."
            )
        names = _class_names(sorted({f.rel.split("/", 1)[0] for f in images}), class_names, root)
        x, sources, skipped = _decode_all(images, shape, len(files), root, LABELED_LAYOUT)
    index = {c: i for i, c in enumerate(names)}
    labels = torch.tensor([index[s.split("/", 1)[0]] for s in sources], dtype=torch.int64)
    return ImageSet(x, labels, names, sources, name or root.name, skipped)


def load_unlabeled(path: str | os.PathLike, input_shape: tuple[int, int, int], name: str = "") -> ImageSet:
    """Load every image under a folder or in a .zip, in any layout, without labels."""
    shape = _check_shape(input_shape)
    root = Path(path)
    with _list_files(root) as files:
        images = _image_files(files, root, UNLABELED_LAYOUT)
        x, sources, skipped = _decode_all(images, shape, len(files), root, UNLABELED_LAYOUT)
    return ImageSet(x, None, (), sources, name or root.name, skipped)


def _check_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape[1:]) < 1:
        raise InputError(f"input_shape must be (C, H, W) with C = 1 or 3; got {tuple(input_shape)}")
    return shape  # type: ignore[return-value]


def _class_names(folders: list[str], given: Sequence[str] | None, root: Path) -> tuple[str, ...]:
    names = tuple(folders) if given is None else tuple(given)
    if given is not None:
        if len(set(names)) != len(names):
            raise InputError(f"class_names must be unique; got {list(names)}")
        unknown = [d for d in folders if d not in names]
        if unknown:
            raise InputError(
                f"Folder(s) {unknown} in '{root.name}' are not among the class names {list(names)}; "
                "rename the folder or add the class to the list"
            )
    if len(names) < 2:
        raise InputError(
            f"Found {len(names)} class folder(s) {list(names)} in '{root.name}'; a labelled set needs "
            f"at least 2. Expected {LABELED_LAYOUT}."
        )
    return names


def _is_junk(rel: str) -> bool:
    parts = rel.split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)  # .DS_Store, ._x.png, .git/
    return hidden or parts[-1].lower() in _JUNK_NAMES


def _is_image(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_EXTENSIONS)


@contextmanager
def _list_files(root: Path) -> Iterator[list[_File]]:
    """Yield the dataset's non-junk files; zip members stay readable until the block ends."""
    if root.is_dir():
        yield _list_dir(root)
    elif root.is_file() and (root.suffix.lower() == ".zip" or zipfile.is_zipfile(root)):
        try:
            zf = zipfile.ZipFile(root)
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(
                f"'{root.name}' is not a readable zip archive ({e}); re-create it with your system's "
                "'Compress' command or `zip -r`"
            ) from e
        with zf:
            yield _strip_single_top(_list_zip(zf, root))
    elif root.exists():
        raise InputError(
            f"Got the file '{root.name}', which is neither a folder nor a .zip archive; "
            "pack the images as .zip (tar, 7z and rar are not read)"
        )
    else:
        raise InputError(f"Dataset path '{root}' does not exist; expected a folder or a .zip archive")


def _walk_error(e: OSError) -> None:
    # os.walk silently skips folders it cannot open; a missing class folder must not go unnoticed.
    raise InputError(f"Cannot read the folder '{e.filename}': {e.strerror}") from e


def _list_dir(root: Path) -> list[_File]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
        dirnames[:] = [d for d in dirnames if not _is_junk(d)]  # do not descend into .git/ etc.
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for fn in filenames:
            rel = fn if rel_dir == "." else f"{rel_dir}/{fn}"
            if not _is_junk(rel):
                files.append(_File(rel, partial(_read_disk_file, Path(dirpath) / fn)))
    return files


def _read_disk_file(p: Path) -> bytes:
    with open(p, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"'{p.name}' is over {MAX_FILE_BYTES // 2**20} MiB; image files that large are refused")
    return data


def _list_zip(zf: zipfile.ZipFile, root: Path) -> list[_File]:
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise InputError(
            f"'{root.name}' has {len(infos):,} entries; at most {MAX_ZIP_MEMBERS:,} are accepted. "
            "Split it into smaller archives."
        )
    files = []
    for info in infos:
        # Names are only used as labels and for sorting, never as paths on disk. Windows tools
        # sometimes write "\" separators; empty parts come from a leading "/" or "a//b".
        rel = "/".join(p for p in info.filename.replace("\\", "/").split("/") if p)
        if not info.is_dir() and rel and not _is_junk(rel):
            files.append(_File(rel, partial(_read_member, zf, info)))
    return files


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_FILE_BYTES:
        raise InputError(
            f"'{info.filename}' unpacks to {info.file_size / 2**20:.0f} MiB; image files over "
            f"{MAX_FILE_BYTES // 2**20} MiB are refused (zip-bomb guard)"
        )
    if info.flag_bits & 0x1:
        raise InputError(f"'{info.filename}' is password-protected; re-create the archive without a password")
    try:
        with zf.open(info) as fh:
            # zipfile stops at the declared file_size and checks the CRC, so at most MAX_FILE_BYTES.
            return fh.read()
    except NotImplementedError as e:
        raise InputError(
            f"'{info.filename}' uses a compression method Python cannot read ({e}); "
            "re-create the archive with standard zip (deflate)"
        ) from e


def _strip_single_top(files: list[_File]) -> list[_File]:
    """If every image sits inside one top folder (`train/cat/1.png`), make that folder the root."""
    images = [f.rel for f in files if _is_image(f.rel)]
    tops = {r.split("/", 1)[0] for r in images}
    if len(tops) != 1 or not all("/" in r for r in images):
        return files
    prefix = tops.pop() + "/"
    return [replace(f, rel=f.rel[len(prefix) :]) for f in files if f.rel.startswith(prefix)]


def _image_files(files: list[_File], root: Path, layout: str) -> list[_File]:
    images = sorted((f for f in files if _is_image(f.rel)), key=lambda f: f.rel)
    if not images:
        raise InputError(
            f"No images in '{root.name}': found {len(files)} file(s), none ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (hidden files and __MACOSX are ignored); expected {layout}"
        )
    return images


def _decode_all(
    images: list[_File], shape: tuple[int, int, int], n_files: int, root: Path, layout: str
) -> tuple[torch.Tensor, tuple[str, ...], tuple[str, ...]]:
    c, h, w = shape
    mode = "L" if c == 1 else "RGB"
    # Filled in place: stacking a list would hold every image twice at the peak.
    out = torch.empty((len(images), c, h, w), dtype=torch.uint8)  # (N, C, H, W)
    sources: list[str] = []
    skipped: list[str] = []
    for f in images:
        try:
            arr = _decode(f.read(), mode, (w, h))  # (H, W) or (H, W, 3)
        except _UNREADABLE:
            skipped.append(f.rel)  # reported through ImageSet.skipped, never dropped silently
            continue
        out[len(sources)] = torch.from_numpy(arr).reshape(h, w, c).permute(2, 0, 1)
        sources.append(f.rel)
    if not sources:
        raise InputError(
            f"No image in '{root.name}' could be read: found {n_files} file(s), {len(images)} with an "
            f"image extension, all {len(skipped)} skipped as unreadable (e.g. '{skipped[0]}'). "
            f"Expected {layout}, in PNG, JPEG, BMP, WebP, TIFF or GIF format."
        )
    if skipped:
        out = out[: len(sources)].clone()  # a view would keep the unused tail in memory
    return out, tuple(sources), tuple(skipped)


def decode_image(data: bytes, input_shape: tuple[int, int, int], name: str = "image") -> torch.Tensor:
    """One image file's bytes → uint8 (C, H, W) at `input_shape`, decoded exactly as the folder
    loaders decode each file (step 5: format allow-list, size and pixel caps, alpha onto black,
    16-bit and float scaling, L/RGB conversion, bilinear resize). For single uploads.

    Raises InputError, naming `name`, when the bytes are not a readable image of an allowed format.
    """
    c, h, w = _check_shape(input_shape)
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"'{name}' is over {MAX_FILE_BYTES // 2**20} MiB; image files that large are refused")
    try:
        arr = _decode(data, "L" if c == 1 else "RGB", (w, h))  # (H, W) or (H, W, 3)
    except _UNREADABLE as e:
        raise InputError(
            f"Could not read '{name}' as an image ({type(e).__name__}: {e}); expected PNG, JPEG, BMP, WebP, TIFF or GIF"
        ) from e
    return torch.from_numpy(arr).reshape(h, w, c).permute(2, 0, 1).contiguous()


def _decode(data: bytes, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One file's bytes → uint8 array in `mode` ("L" or "RGB") at `size` (W, H)."""
    with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as img:
        if img.width * img.height > MAX_PIXELS:  # the header is read, the pixels are not yet
            raise ValueError(f"{img.width}x{img.height} pixels is over the limit of {MAX_PIXELS:,}")
        img.load()  # decode now, so a truncated file fails inside the caller's try (GIF: frame 0)
        out = _to_mode(img, mode)
        if out.size != size:
            # Pillow widens the filter when shrinking, so this is antialiased bilinear.
            out = out.resize(size, Image.Resampling.BILINEAR)
        return np.array(out, dtype=np.uint8)  # a copy: Image.close() invalidates the pixels


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        # PIL's own convert() clips these to 0..255, which turns most 16-bit images white.
        img = Image.fromarray(_high_depth_to_uint8(img))
    elif "transparency" in img.info or any(b in ("A", "a") for b in img.getbands()):
        # Transparent pixels hold arbitrary colours; flatten onto black instead of exposing them.
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img.convert("RGBA"))
    return img if img.mode == mode else img.convert(mode)


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)  # (H, W)
    if img.mode.startswith("I;16"):
        a = a / 257.0  # 0..65535 → 0..255 exactly
    elif img.mode == "I":
        # A 32-bit container of unknown depth: 8-bit data stays, wider data is read as 16-bit.
        a = np.clip(a, 0, 65535)
        a = a / 257.0 if a.max() > 255 else a
    else:  # "F": float data in 0..1 is scaled, anything else is taken as 0..255
        a = a * 255.0 if a.max() <= 1.0 else a
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
