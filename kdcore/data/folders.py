"""Load a user's images from a folder or a .zip archive into an `ImageSet`.

Two layouts:

    load_labeled     root/<class>/.../<image>    one sub-folder per class (torchvision's ImageFolder)
    load_unlabeled   root/.../<image>            any layout, searched recursively

Steps:
1. List the files: a folder is walked on disk; a zip is read member by member, never extracted.
2. Drop OS junk: `__MACOSX/`, anything with a path part starting with ".", Thumbs.db, desktop.ini.
3. For a zip whose images all sit in one top folder (`train.zip` → `train/cat/...`), that folder
   is the root (kept as `ImageSet.top`). A folder given on disk is always its own root.
4. Keep files with an image extension, sorted by relative path, so the order is deterministic.
5. Decode each with PIL, flatten alpha onto black, bring 16-bit and float images to 0..255,
   convert to L (C = 1) or RGB (C = 3) and resize to (H, W) → uint8 (N, C, H, W).
   Files with an image extension that cannot be decoded are listed in `ImageSet.skipped`.
   `decode_image` is the same decoder for one file's bytes (the dashboard's uploads).

Guards against hostile input, each with its limit from `kdcore.limits.current()`:
- a zip goes through `kdcore.archive`: entry count (`max_archive_entries`), non-empty unique
  names, stored/deflate only, no overlapping entries, real decompressed bytes counted per member
  (`max_file_bytes`) and per archive (`max_archive_bytes`); a damaged member is skipped;
- on disk, a file is opened without blocking and read only if it is a regular file: a FIFO,
  device or socket with an image extension is skipped with a note ("(not a regular file: FIFO)")
  instead of hanging; at most `max_file_bytes` are read; folders are walked without following
  symlinked folders; a name that is not valid UTF-8 is an error naming it;
- one pixel cap for every decode, folders and single uploads alike (`max_image_pixels`), checked
  on the header before any pixel is decoded; only the PNG, JPEG, BMP, WebP, TIFF and GIF
  decoders of PIL may run;
- the decoded set, N × C × H × W bytes, is checked against `max_dataset_bytes` before it is
  allocated;
- labelled sets: with `class_names` given (the model's classes), the class folders must be
  exactly those names, or an error names the missing and the unexpected ones (a missing folder
  would shift every label after it); a class folder without images is an error naming it.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdcore import limits
from kdcore.archive import CorruptMemberError, SafeZip, open_zip
from kdcore.data.imageset import ImageSet
from kdcore.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Only these PIL decoders may run, whatever the extension claims: a ".png" that really is an
# EPS file would otherwise hand the bytes to Ghostscript.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF", "GIF")
_JUNK_NAMES = {"thumbs.db", "desktop.ini"}

LABELED_LAYOUT = "one sub-folder per class with the images inside (e.g. cat/001.png, dog/002.png)"
UNLABELED_LAYOUT = "image files (.png, .jpg, ...) in any folder layout"
# What PIL and zipfile raise on a corrupt, truncated or hostile file: that file is skipped.
UNREADABLE = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    zipfile.BadZipFile,
    Image.DecompressionBombError,
    CorruptMemberError,
)
_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFCHR: "device", stat.S_IFBLK: "device", stat.S_IFSOCK: "socket"}


class NotRegularFile(Exception):
    """A FIFO, device or socket where an image file was expected: skipped, never read."""


@dataclass(frozen=True)
class File:
    rel: str  # posix path relative to the dataset root, e.g. "cat/001.png"
    read: Callable[[], bytes]


@dataclass(frozen=True)
class Listing:
    files: list[File]
    folders: set[str] = field(default_factory=set)  # every non-junk folder, e.g. {"cat", "cat/sub"}
    top: str = ""  # the zip's one top folder, cut from every name (`strip_single_top`)


def load_labeled(
    path: str | os.PathLike,
    input_shape: tuple[int, int, int],
    class_names: Sequence[str] | None = None,
    name: str = "",
) -> ImageSet:
    """Load `root/<class>/.../<image>` from a folder or a .zip; label = index of the class folder.

    Classes are the sorted folder names, or `class_names` in the given order: then the folders
    must be exactly those names (an error names the missing and the unexpected ones). A class
    folder without images is an error naming it.
    """
    shape = _check_shape(input_shape)
    root = Path(path)
    with list_files(root) as listing:
        images = image_files(listing.files, root, LABELED_LAYOUT)
        names = class_folders(listing, images, class_names, root)
        x, sources, skipped = _decode_all(images, shape, len(listing.files), root, LABELED_LAYOUT)
    index = {c: i for i, c in enumerate(names)}
    labels = torch.tensor([index[s.split("/", 1)[0]] for s in sources], dtype=torch.int64)
    return ImageSet(x, labels, names, sources, name or root.name, skipped, listing.top)


def load_unlabeled(path: str | os.PathLike, input_shape: tuple[int, int, int], name: str = "") -> ImageSet:
    """Load every image under a folder or in a .zip, in any layout, without labels."""
    shape = _check_shape(input_shape)
    root = Path(path)
    with list_files(root) as listing:
        images = image_files(listing.files, root, UNLABELED_LAYOUT)
        x, sources, skipped = _decode_all(images, shape, len(listing.files), root, UNLABELED_LAYOUT)
    return ImageSet(x, None, (), sources, name or root.name, skipped, listing.top)


def _check_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape[1:]) < 1:
        raise InputError(f"input_shape must be (C, H, W) with C = 1 or 3; got {tuple(input_shape)}")
    return shape  # type: ignore[return-value]


def class_folders(listing: Listing, images: list[File], given: Sequence[str] | None, root: Path) -> tuple[str, ...]:
    """The class names of a labelled set (sorted folder names, or `given`), or InputError saying why the
    listing is not a labelled set: images at the top level, folders that differ from `given`, empty
    class folders, fewer than 2 classes. `load_labeled` and the upload check (`kdcore.data.summary`) share it."""
    at_root = [f.rel for f in images if "/" not in f.rel]
    if at_root:
        raise InputError(
            f"{len(at_root)} image(s) sit directly in the top level of '{root.name}' "
            f"(e.g. {at_root[0]!r}), so their class is unknown; expected {LABELED_LAYOUT}. "
            "Move each image into the folder of its class."
        )
    with_images = {f.rel.split("/", 1)[0] for f in images}
    folders = with_images | {d.split("/", 1)[0] for d in listing.folders}
    folders |= {f.rel.split("/", 1)[0] for f in listing.files if "/" in f.rel}
    names = tuple(sorted(folders)) if given is None else tuple(given)
    if given is not None:
        if len(set(names)) != len(names):
            raise InputError(f"class_names must be unique; got {list(names)}")
        unexpected = sorted(d for d in folders if d not in names)
        missing = [c for c in names if c not in folders]
        if unexpected or missing:
            problems = [f"folder(s) {_few(unexpected)} are not among the class names"] if unexpected else []
            problems += [f"there is no folder for {_few(missing)}"] if missing else []
            raise InputError(
                f"The class folders of '{root.name}' do not match the {len(names)} classes {_few(list(names))}: "
                + "; ".join(problems)
                + ". Name one folder per class, exactly as the classes are named (a missing folder would shift "
                "every label after it)."
            )
    empty = sorted(folders - with_images)
    if empty:
        raise InputError(
            f"Class folder(s) {_few(empty)} in '{root.name}' hold no images; put each class's images in its "
            "folder (folders behind symlinks are not followed), or remove the empty folder"
        )
    if len(names) < 2:
        raise InputError(
            f"Found {len(names)} class folder(s) {list(names)} in '{root.name}'; a labelled set needs "
            f"at least 2. Expected {LABELED_LAYOUT}."
        )
    return names


def _few(items: list[str], n: int = 10) -> str:
    return str(items[:n])[:-1] + f", … {len(items) - n} more]" if len(items) > n else str(items)


def _is_junk(rel: str) -> bool:
    parts = rel.split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)  # .DS_Store, ._x.png, .git/
    return hidden or parts[-1].lower() in _JUNK_NAMES


def is_image(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_EXTENSIONS)


@contextmanager
def list_files(root: Path) -> Iterator[Listing]:
    """Yield the dataset's non-junk files and folders; zip members stay readable until the block ends."""
    if root.is_dir():
        yield _list_dir(root)
    elif root.is_file() and (root.suffix.lower() == ".zip" or zipfile.is_zipfile(root)):
        with open_zip(root) as archive:
            yield strip_single_top(_list_zip(archive))
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


def _list_dir(root: Path) -> Listing:
    files, folders = [], set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
        dirnames[:] = [d for d in dirnames if not _is_junk(d)]  # do not descend into .git/ etc.
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for d in dirnames:
            folders.add(_utf8(d if rel_dir == "." else f"{rel_dir}/{d}", root))
        for fn in filenames:
            rel = fn if rel_dir == "." else f"{rel_dir}/{fn}"
            if not _is_junk(rel):
                files.append(File(_utf8(rel, root), partial(_read_disk_file, Path(dirpath) / fn)))
    return Listing(files, folders)


def _utf8(rel: str, root: Path) -> str:
    """Names become class names and report entries; one that is not UTF-8 cannot be written there."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(rel)
        raise InputError(f"'{root.name}' holds a file or folder whose name is not UTF-8 ({raw!r}); rename it") from None
    return rel


def _read_disk_file(p: Path) -> bytes:
    cap = limits.current().max_file_bytes
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"not a regular file: {_KINDS.get(stat.S_IFMT(mode), 'special file')}")
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise InputError(f"{p.name!r} is over {cap // 2**20} MiB; image files that large are refused (max_file_bytes)")
    return data


def _list_zip(archive: SafeZip) -> Listing:
    cap = limits.current().max_file_bytes
    files, folders = [], set()
    for m in archive.members:
        rel = posix_name(m.name)
        if not rel or _is_junk(rel):
            continue
        if m.is_dir:
            folders.add(rel)
        else:
            files.append(File(rel, partial(archive.read, m, cap)))
    return Listing(files, folders)


def posix_name(name: str) -> str:
    """A zip entry's name as the loaders use it: `train\\cat//1.png` → `train/cat/1.png`."""
    # Names are only used as labels and for sorting, never as paths on disk. Windows tools
    # sometimes write "\" separators; empty parts come from a leading "/" or "a//b".
    return "/".join(p for p in name.replace("\\", "/").split("/") if p)


def strip_single_top(listing: Listing) -> Listing:
    """If every image sits inside one top folder (`train/cat/1.png`), make that folder the root."""
    images = [f.rel for f in listing.files if is_image(f.rel)]
    tops = {r.split("/", 1)[0] for r in images}
    if len(tops) != 1 or not all("/" in r for r in images):
        return listing
    prefix = tops.pop() + "/"
    files = [replace(f, rel=f.rel[len(prefix) :]) for f in listing.files if f.rel.startswith(prefix)]
    return Listing(files, {d[len(prefix) :] for d in listing.folders if d.startswith(prefix)}, prefix[:-1])


def image_files(files: list[File], root: Path, layout: str) -> list[File]:
    images = sorted((f for f in files if is_image(f.rel)), key=lambda f: f.rel)
    if not images:
        raise InputError(
            f"No images in '{root.name}': found {len(files)} file(s), none ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (hidden files and __MACOSX are ignored); expected {layout}"
        )
    return images


def _decode_all(
    images: list[File], shape: tuple[int, int, int], n_files: int, root: Path, layout: str
) -> tuple[torch.Tensor, tuple[str, ...], tuple[str, ...]]:
    c, h, w = shape
    mode = "L" if c == 1 else "RGB"
    budget = limits.current().max_dataset_bytes
    if len(images) * c * h * w > budget:
        raise InputError(
            f"'{root.name}' has {len(images):,} images; decoded at {c}×{h}×{w} that is "
            f"{len(images) * c * h * w / 2**30:.1f} GiB, over the limit of {budget / 2**30:.1f} GiB "
            "(max_dataset_bytes). Use fewer images or a smaller input size."
        )
    # Filled in place: stacking a list would hold every image twice at the peak.
    out = torch.empty((len(images), c, h, w), dtype=torch.uint8)  # (N, C, H, W)
    sources: list[str] = []
    skipped: list[str] = []
    for f in images:
        try:
            arr = _decode(f.read(), mode, (w, h))  # (H, W) or (H, W, 3)
        except UNREADABLE:
            skipped.append(f.rel)  # reported through ImageSet.skipped, never dropped silently
            continue
        except NotRegularFile as e:
            skipped.append(f"{f.rel} ({e})")
            continue
        out[len(sources)] = torch.from_numpy(arr).reshape(h, w, c).permute(2, 0, 1)
        sources.append(f.rel)
    if not sources:
        raise InputError(
            f"No image in '{root.name}' could be read: found {n_files} file(s), {len(images)} with an "
            f"image extension, all {len(skipped)} skipped as unreadable (e.g. {skipped[0]!r}). "
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
    cap = limits.current().max_file_bytes
    if len(data) > cap:
        raise InputError(f"'{name}' is over {cap // 2**20} MiB; image files that large are refused (max_file_bytes)")
    try:
        arr = _decode(data, "L" if c == 1 else "RGB", (w, h))  # (H, W) or (H, W, 3)
    except UNREADABLE as e:
        raise InputError(
            f"Could not read '{name}' as an image ({type(e).__name__}: {e}); expected PNG, JPEG, BMP, WebP, TIFF or GIF"
        ) from e
    return torch.from_numpy(arr).reshape(h, w, c).permute(2, 0, 1).contiguous()


def _decode(data: bytes, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One file's bytes → uint8 array in `mode` ("L" or "RGB") at `size` (W, H)."""
    max_pixels = limits.current().max_image_pixels
    with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
        if img.width * img.height > max_pixels:  # the header is read, the pixels are not yet
            raise ValueError(f"{img.width}x{img.height} pixels is over the limit of {max_pixels:,} (max_image_pixels)")
        img.load()  # decode now, so a truncated file fails inside the caller's try (GIF: frame 0)
        out = _to_mode(img, mode)
        if out.size != size:
            # Pillow widens the filter when shrinking, so this is antialiased bilinear.
            out = out.resize(size, Image.Resampling.BILINEAR)
        return np.array(out, dtype=np.uint8)  # a copy: Image.close() invalidates the pixels


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        # PIL's own convert() clips these to 0..255, which turns most 16-bit images white.
        img = Image.fromarray(high_depth_to_uint8(img))
    elif "transparency" in img.info or any(b in ("A", "a") for b in img.getbands()):
        # Transparent pixels hold arbitrary colours; flatten onto black instead of exposing them.
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img.convert("RGBA"))
    return img if img.mode == mode else img.convert(mode)


def high_depth_to_uint8(img: Image.Image) -> np.ndarray:
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
