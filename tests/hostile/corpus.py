"""A generator of hostile inputs for kdcore's readers: one function per case, each writing its file.

Every maker has the signature `make(out_dir: Path, **sizes) -> Path`: it writes one file (or a
folder) under `out_dir` and returns its path. Sizes default to the cases of issue 11 and can be
made smaller (a fuzzer seeding its corpus wants small files). `CASES` lists every case with the
reader that must refuse it and what the refusal must say; `read(case, path)` runs that reader.

    from tests.hostile.corpus import CASES, read
    case = CASES["deep_tuple_pt"]
    path = case.make(tmp_path)
    read(case, path)   # raises ModelLoadError("... nested more than 100 deep (max_nesting) ...")

Readers: "model" (load_model against a paper-cnn spec), "stored_spec_model" (load_model with the
spec stored in the file), "spec" (read_spec), "labeled"/"unlabeled" (the folder/zip loaders),
"image" (decode_image, the Explain page's decoder). Nothing here imports torch at import time
beyond what the makers need, and nothing writes outside `out_dir`.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MiB, GiB = 2**20, 2**30
SPEC_ARGS = ("paper-cnn", 10, (1, 8, 8))  # the spec "model" cases are loaded against
_DOS_DATE = (1 << 5) | 1  # 1980-01-01


# --- zip writing at the byte level (the standard library refuses to write hostile archives) -------


@dataclass(frozen=True)
class RawEntry:
    """One local entry: `payload` is what is stored (already compressed for method 8 or 12)."""

    name: bytes
    payload: bytes
    method: int = 0
    crc: int = 0
    size: int = 0  # declared uncompressed size
    flags: int = 0
    csize: int | None = None  # declared compressed size, if not len(payload)


def write_raw_zip(path: Path, entries: list[RawEntry], listing: list[tuple[int, bytes]] | None = None) -> Path:
    """Write local entries, then a central directory listing (entry index, name) pairs.

    The default lists each entry once under its own name; repeating an index makes entries
    that overlap (several directory records pointing at the same local header)."""
    local, offsets = bytearray(), []
    for e in entries:
        offsets.append(len(local))
        local += struct.pack(
            "<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, e.flags, e.method, 0, _DOS_DATE, e.crc,
            _csize(e), e.size, len(e.name), 0,
        )  # fmt: skip
        local += e.name + e.payload
    central = bytearray()
    pairs = listing if listing is not None else [(i, e.name) for i, e in enumerate(entries)]
    for i, name in pairs:
        e = entries[i]
        central += struct.pack(
            "<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, e.flags, e.method, 0, _DOS_DATE, e.crc,
            _csize(e), e.size, len(name), 0, 0, 0, 0, 0o644 << 16, offsets[i],
        )  # fmt: skip
        central += name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(pairs), len(pairs), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def _csize(e: RawEntry) -> int:
    return len(e.payload) if e.csize is None else e.csize


def deflate_zeros(n: int, block: int = 16 * MiB) -> tuple[bytes, int]:
    """A raw deflate stream of `n` zero bytes and its CRC, built from one repeated block (fast)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    whole, rest = divmod(n, block)
    unit = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH) if whole else b""  # self-contained
    tail = c.compress(bytes(rest)) + c.flush()
    crc, zeros = 0, bytes(block)
    for _ in range(whole):
        crc = zlib.crc32(zeros, crc)
    return unit * whole + tail, zlib.crc32(bytes(rest), crc)


def _png_bytes(value: int = 128, size: tuple[int, int] = (8, 8)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, "PNG")
    return buf.getvalue()


# --- archives -----------------------------------------------------------------------------------


def overlap_zip(out_dir: Path, entries: int = 300, member_bytes: int = 60 * MiB) -> Path:
    """`entries` directory records all pointing at one deflated member of `member_bytes` zeros
    (76 KB on disk by default; a reader that trusts the directory decompresses 18 GB), plus one
    ordinary image in a second class folder."""
    payload, crc = deflate_zeros(member_bytes)
    png = _png_bytes()
    bomb = RawEntry(b"a/x.png", payload, 8, crc, member_bytes)
    ok = RawEntry(b"b/ok.png", png, 0, zlib.crc32(png), len(png))
    return write_raw_zip(out_dir / "overlap.zip", [bomb, ok], [(0, bomb.name)] * entries + [(1, ok.name)])


def quoted_overlap_zip(out_dir: Path) -> Path:
    """Two entries with their own local headers, the first's compressed data declared to run over
    the second's header and data (the "quoted overlap" of Fifield's zip bombs)."""
    png = _png_bytes()
    second = RawEntry(b"b/y.png", png, 0, zlib.crc32(png), len(png))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = c.compress(png) + c.flush()
    covers = len(payload) + 30 + len(second.name) + len(second.payload)
    first = RawEntry(b"a/x.png", payload, 8, zlib.crc32(png), len(png), csize=covers)
    return write_raw_zip(out_dir / "quoted.zip", [first, second])


def bzip2_bomb_zip(out_dir: Path, inflated: int = 256 * MiB, declared: int = 1000) -> Path:
    """A bzip2 member that unpacks to `inflated` zero bytes but declares `declared`: zipfile's
    bzip2 reader decompresses all of it in one call, whatever the declared size."""
    c, zeros = bz2.BZ2Compressor(9), bytes(16 * MiB)
    payload = b"".join(c.compress(zeros) for _ in range(inflated // len(zeros))) + c.flush()
    entries = [RawEntry(b"a/bomb.png", payload, 12, 0, declared), RawEntry(b"b/ok.png", _png_bytes(), 0, 0, 0)]
    ok = entries[1]
    entries[1] = RawEntry(ok.name, ok.payload, 0, zlib.crc32(ok.payload), len(ok.payload))
    return write_raw_zip(out_dir / "bzip2.zip", entries)


def lzma_member_zip(out_dir: Path) -> Path:
    """A real LZMA-compressed member (method 14), written by zipfile itself."""
    path = out_dir / "lzma.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as zf:
        zf.writestr("a/x.png", _png_bytes())
        zf.writestr("b/y.png", _png_bytes(7))
    return path


def lying_size_zip(out_dir: Path, inflated: int = 2 * GiB, declared: int = 100) -> Path:
    """A deflated member declaring `declared` bytes whose stream inflates to `inflated`: a reader
    that asks zlib for everything at once (`read()` does) holds all of it before truncating."""
    payload, crc = deflate_zeros(inflated)
    ok = _png_bytes()
    return write_raw_zip(
        out_dir / "lying.zip",
        [RawEntry(b"a/liar.png", payload, 8, crc, declared), RawEntry(b"b/ok.png", ok, 0, zlib.crc32(ok), len(ok))],
    )


def oversized_claim_zip(out_dir: Path) -> Path:
    """A member that declares more bytes than its stream holds (and a CRC that matches the stream)."""
    data = _png_bytes()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = c.compress(data) + c.flush()
    ok = RawEntry(b"b/ok.png", data, 0, zlib.crc32(data), len(data))
    return write_raw_zip(out_dir / "claim.zip", [RawEntry(b"a/x.png", payload, 8, zlib.crc32(data), 10 * MiB), ok])


def stored_size_lie_zip(out_dir: Path) -> Path:
    """A stored member whose declared size differs from what it stores."""
    data = _png_bytes()
    ok = RawEntry(b"b/ok.png", data, 0, zlib.crc32(data), len(data))
    return write_raw_zip(out_dir / "stored_lie.zip", [RawEntry(b"a/x.png", data, 0, zlib.crc32(data), 5 * MiB), ok])


def empty_name_zip(out_dir: Path) -> Path:
    png = _png_bytes()
    good = RawEntry(b"a/x.png", png, 0, zlib.crc32(png), len(png))
    return write_raw_zip(out_dir / "empty_name.zip", [good, RawEntry(b"", png, 0, zlib.crc32(png), len(png))])


def non_utf8_name_zip(out_dir: Path) -> Path:
    """A member name with invalid UTF-8 bytes, flagged as UTF-8 (general purpose bit 11)."""
    png = _png_bytes()
    good = RawEntry(b"a/x.png", png, 0, zlib.crc32(png), len(png))
    bad = RawEntry(b"b/\xff\xfe.png", png, 0, zlib.crc32(png), len(png), flags=0x800)
    return write_raw_zip(out_dir / "non_utf8.zip", [good, bad])


def duplicate_names_zip(out_dir: Path) -> Path:
    png = _png_bytes()
    e = RawEntry(b"a/x.png", png, 0, zlib.crc32(png), len(png))
    return write_raw_zip(out_dir / "dupes.zip", [e, e, RawEntry(b"b/y.png", png, 0, zlib.crc32(png), len(png))])


def many_tiny_images_zip(out_dir: Path, n: int = 100_000) -> Path:
    """`n` 1×1 PNGs; at a 3×224×224 input they decode to n × 150 KB (15 GB for 100k)."""
    path, png = out_dir / "tiny.zip", _png_bytes(size=(1, 1))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"img/{i:06d}.png", png)
    return path


# --- images and folders -------------------------------------------------------------------------


def huge_png(out_dir: Path, side: int = 12_000) -> Path:
    """A `side`² greyscale PNG of zeros (144 M pixels by default), about 140 KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    c, row = zlib.compressobj(9), bytes(side + 1)  # filter byte + pixels
    rows = 1024
    idat = b"".join(c.compress(row * min(rows, side - i)) for i in range(0, side, rows)) + c.flush()
    ihdr = struct.pack(">2I5B", side, side, 8, 0, 0, 0, 0)
    path = out_dir / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def fifo_folder(out_dir: Path) -> Path:
    """An image folder with a FIFO named like an image (opening it for reading blocks forever)."""
    root = out_dir / "with_fifo"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "ok.png").write_bytes(_png_bytes())
    os.mkfifo(root / "a" / "pipe.png")
    return root


def non_utf8_folder(out_dir: Path) -> Path:
    root = out_dir / "non_utf8"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "ok.png").write_bytes(_png_bytes())
    with open(os.fsencode(root / "b") + b"/\xff.png", "wb") as f:
        f.write(_png_bytes())
    return root


def _labelled(root: Path, classes: list[str], empty: tuple[str, ...] = ()) -> Path:
    for i, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        if cls not in empty:
            (root / cls / f"{i}.png").write_bytes(_png_bytes(10 * i))
    return root


def missing_class_folder(out_dir: Path) -> Path:
    """A test set of a 10-class model without the folder of class 3."""
    return _labelled(out_dir / "missing", [str(i) for i in range(10) if i != 3])


def renamed_class_folders(out_dir: Path) -> Path:
    """Class folders c0…c9 where the model's classes are 0…9."""
    return _labelled(out_dir / "renamed", [f"c{i}" for i in range(10)])


def empty_class_folder(out_dir: Path) -> Path:
    return _labelled(out_dir / "empty", [str(i) for i in range(10)], empty=("4",))


# --- model files --------------------------------------------------------------------------------


def torch_zip(path: Path, data_pkl: bytes, method: int = zipfile.ZIP_STORED) -> Path:
    """A torch.save archive (the records of an empty dict) with `data_pkl` as its pickle."""
    import torch

    buf = io.BytesIO()
    torch.save({}, buf)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = data_pkl if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, data, compress_type=method if info.filename.endswith("/data.pkl") else 0)
    return path


def deep_tuple_pt(out_dir: Path, depth: int = 1_000_000) -> Path:
    """{((…(None,)…),): 1} with the key nested `depth` deep: hashing it overflows the C stack."""
    return torch_zip(out_dir / "deep.pt", b"\x80\x02}N" + b"\x85" * depth + b"K\x01s.")


def hash_bomb_pt(out_dir: Path, levels: int = 60) -> Path:
    """A dict key t60 where t(i) = (t(i-1), t(i-1)): 60 deep, but 2^60 tuples to hash."""
    # t(i-1) is on the stack; BINGET pushes it again, TUPLE2 pairs the two, BINPUT remembers t(i).
    body = b"N\x85q\x00" + b"".join(b"h%c\x86q%c" % (i - 1, i) for i in range(1, levels + 1))
    return torch_zip(out_dir / "hash.pt", b"\x80\x02}" + body + b"K\x01s.")


def bytearray_pt(out_dir: Path, n: int = 4_600_000_000) -> Path:
    """{'a': bytearray(n)}: the allow-listed bytearray asked for `n` bytes by a 1.4 KB file."""
    arg = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    pkl = b"\x80\x02}X\x01\x00\x00\x00acbuiltins\nbytearray\n\x8a" + bytes([len(arg)]) + arg + b"\x85Rs."
    return torch_zip(out_dir / "bytearray.pt", pkl)


def tensor_ctor_pt(out_dir: Path, rows: int = 100_000, cols: int = 100_000) -> Path:
    """{'w': torch.FloatTensor(rows, cols)}: an allow-listed tensor class called with sizes."""
    sizes = b"J" + struct.pack("<i", rows) + b"J" + struct.pack("<i", cols)
    pkl = b"\x80\x02}X\x01\x00\x00\x00wctorch\nFloatTensor\n" + sizes + b"\x86Rs."
    return torch_zip(out_dir / "ctor.pt", pkl)


def storage_elements_pt(out_dir: Path, numel: int = 10**12) -> Path:
    """A state_dict whose one storage declares `numel` float elements (4 TB)."""
    n = numel.to_bytes((numel.bit_length() + 8) // 8, "little", signed=True)
    pid = (
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu\x8a"
        + bytes([len(n)])
        + n
    )
    pkl = (
        b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"tQK\x00\x8a" + bytes([len(n)]) + n
    )
    pkl += b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs."
    return torch_zip(out_dir / "storage.pt", pkl)


def pickle_inflate_pt(out_dir: Path, inflated: int = 2_600_000_000) -> Path:
    """A data.pkl deflated from `inflated` bytes (about 2.5 MB on disk): torch allocates it whole."""
    payload, crc = deflate_zeros(inflated)
    import torch

    buf = io.BytesIO()
    torch.save({}, buf)
    entries = []
    with zipfile.ZipFile(buf) as src:
        for info in src.infolist():
            if info.filename.endswith("/data.pkl"):
                entries.append(RawEntry(info.filename.encode(), payload, 8, crc, inflated))
            else:
                data = src.read(info)
                entries.append(RawEntry(info.filename.encode(), data, 0, zlib.crc32(data), len(data)))
    return write_raw_zip(out_dir / "inflate.pt", entries)


def bzip2_pt(out_dir: Path) -> Path:
    return torch_zip(out_dir / "bzip2.pt", b"\x80\x02}.", method=zipfile.ZIP_BZIP2)


def text_pth(out_dir: Path) -> Path:
    """A text file with a model's extension (torch used to answer KeyError(101))."""
    path = out_dir / "notes.pth"
    path.write_text("epoch 3: loss 0.12, accuracy 0.97\nsee the README for the weights\n")
    return path


def random_pt(out_dir: Path, n: int = 4096, seed: int = 0) -> Path:
    path = out_dir / "random.pt"
    path.write_bytes(b"\x9c" + np.random.default_rng(seed).bytes(n))
    return path


def tar_pt(out_dir: Path) -> Path:
    """torch's pre-2018 tar format, which torch.load would unpack into a temporary folder."""
    path = out_dir / "legacy.pt"
    with tarfile.open(path, "w") as tf:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"\x80\x02N."))
    return path


def _weights(dtype: str = "float32", poison: float | None = None) -> dict:
    import torch

    from kdcore.models.registry import build_model
    from kdcore.models.spec import ModelSpec

    torch.manual_seed(0)
    sd = build_model(ModelSpec(*SPEC_ARGS)).state_dict()
    if poison is not None:
        sd["classifier.3.weight"][0, 0] = poison
    if dtype != "float32":
        sd = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in sd.items()}
    return sd


def _safetensors(path: Path, sd: dict, spec_text: str | None = None) -> Path:
    import safetensors.torch

    safetensors.torch.save_file(sd, path, metadata={"kdcore_spec": spec_text} if spec_text is not None else None)
    return path


def nan_weights(out_dir: Path) -> Path:
    return _safetensors(out_dir / "nan.safetensors", _weights(poison=float("nan")))


def inf_weights(out_dir: Path) -> Path:
    return _safetensors(out_dir / "inf.safetensors", _weights(poison=float("-inf")))


def bool_weights(out_dir: Path) -> Path:
    return _safetensors(out_dir / "bool.safetensors", _weights("bool"))


def int_weights(out_dir: Path) -> Path:
    return _safetensors(out_dir / "int.safetensors", _weights("int64"))


def complex_weights(out_dir: Path) -> Path:
    import torch

    path = out_dir / "complex.pt"  # safetensors has no complex dtype
    torch.save(_weights("complex64"), path)
    return path


def empty_safetensors(out_dir: Path) -> Path:
    path = out_dir / "empty.safetensors"
    path.write_bytes(b"")
    return path


def garbage_safetensors(out_dir: Path) -> Path:
    path = out_dir / "garbage.safetensors"
    path.write_bytes(b"\xff" * 8 + b"not a header")
    return path


def _spec_case(filename: str, spec: object) -> Callable[[Path], Path]:
    """A valid weights file whose stored spec (safetensors metadata) is `spec` (JSON text if a str)."""

    def make(out_dir: Path) -> Path:
        text = spec if isinstance(spec, str) else json.dumps(spec)
        return _safetensors(out_dir / filename, _weights(), text)

    make.__name__ = filename.removesuffix(".safetensors")
    return make


def sidecar_spec(out_dir: Path) -> Path:
    """A .pt with a `<stem>.json` spec beside it whose input is 1×100000×100000."""
    import torch

    path = out_dir / "sidecar.pt"
    torch.save(_weights(), path)
    (out_dir / "sidecar.json").write_text(
        json.dumps({"arch": "paper-cnn", "num_classes": 10, "input_shape": [1, 10**5, 10**5]})
    )
    return path


_BASE = {"arch": "paper-cnn", "num_classes": 10, "input_shape": [1, 8, 8]}
spec_arch_list = _spec_case("arch_list.safetensors", {**_BASE, "arch": ["paper-cnn"]})
spec_fractional_classes = _spec_case("classes_frac.safetensors", {**_BASE, "num_classes": 10.5})
spec_absurd_classes = _spec_case("classes_huge.safetensors", {**_BASE, "num_classes": 10**12})
spec_absurd_input = _spec_case("input_huge.safetensors", {**_BASE, "input_shape": [1, 100_000, 100_000]})
spec_deep_json = _spec_case("deep_json.safetensors", "[" * 100_000 + "]" * 100_000)
spec_bad_kwargs = _spec_case(
    "bad_kwargs.safetensors",
    {"arch": "tv:resnet18", "num_classes": 10, "input_shape": [3, 32, 32], "extra": {"foo": 1}},
)


# --- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile input: how to make it, which reader must refuse it, and what it must say.

    error: the KDCoreError subclass expected, or None when the reader must succeed and say what
    it skipped (then `match` is searched in the skipped entries). bomb: measured for memory and
    time in a subprocess (see tests/hostile/measure.py)."""

    make: Callable[..., Path]
    reader: str
    error: str | None
    match: str
    bomb: bool = False
    kwargs: dict = field(default_factory=dict)  # extra arguments for the reader


_NAMES10 = tuple(str(i) for i in range(10))
_I, _M, _C = "InputError", "ModelLoadError", "ConfigError"
_LABELS = {"class_names": _NAMES10}
CASES: dict[str, Case] = {
    # archives
    "overlap_zip": Case(overlap_zip, "labeled", _I, r"overlap", bomb=True),
    "quoted_overlap_zip": Case(quoted_overlap_zip, "labeled", _I, r"overlap"),
    "bzip2_bomb_zip": Case(bzip2_bomb_zip, "labeled", _I, r"bzip2", bomb=True),
    "lzma_member_zip": Case(lzma_member_zip, "labeled", _I, r"LZMA"),
    "lying_size_zip": Case(lying_size_zip, "labeled", None, r"a/liar\.png", bomb=True),
    "oversized_claim_zip": Case(oversized_claim_zip, "labeled", _I, r"declares 10,485,760 bytes but holds"),
    "stored_size_lie_zip": Case(stored_size_lie_zip, "labeled", _I, r"stored uncompressed but declares"),
    "empty_name_zip": Case(empty_name_zip, "labeled", _I, r"empty name"),
    "non_utf8_name_zip": Case(non_utf8_name_zip, "labeled", _I, r"not valid UTF-8"),
    "duplicate_names_zip": Case(duplicate_names_zip, "labeled", _I, r"two entries named 'a/x\.png'"),
    "many_tiny_images_zip": Case(
        many_tiny_images_zip, "unlabeled", _I, r"max_dataset_bytes", bomb=True, kwargs={"shape": (3, 224, 224)}
    ),
    # images and folders
    "huge_png": Case(huge_png, "image", _I, r"12000x12000 pixels.*max_image_pixels", bomb=True),
    "fifo_folder": Case(fifo_folder, "labeled", None, r"a/pipe\.png \(not a regular file: FIFO\)"),
    "non_utf8_folder": Case(non_utf8_folder, "labeled", _I, r"not UTF-8 \(b'b/\\xff\.png'\)"),
    "missing_class_folder": Case(missing_class_folder, "labeled", _I, r"no folder for \['3'\]", kwargs=_LABELS),
    "renamed_class_folders": Case(
        renamed_class_folders, "labeled", _I, r"'c0', 'c1'.*not among the class.*no folder for .'0'", kwargs=_LABELS
    ),
    "empty_class_folder": Case(empty_class_folder, "labeled", _I, r"Class folder\(s\) \['4'\].*hold no images"),
    # model files
    "deep_tuple_pt": Case(deep_tuple_pt, "model", _M, r"nested more than 100 deep", bomb=True),
    "hash_bomb_pt": Case(hash_bomb_pt, "model", _M, r"shared references", bomb=True),
    "bytearray_pt": Case(bytearray_pt, "model", _M, r"bytearray.*4,600,000,000.*max_tensor_elements", bomb=True),
    "tensor_ctor_pt": Case(tensor_ctor_pt, "model", _M, r"FloatTensor.*max_tensor_elements", bomb=True),
    "storage_elements_pt": Case(storage_elements_pt, "model", _M, r"storages.*max_tensor_elements", bomb=True),
    "pickle_inflate_pt": Case(pickle_inflate_pt, "model", _M, r"data\.pkl.*max_pickle_bytes", bomb=True),
    "bzip2_pt": Case(bzip2_pt, "model", _M, r"bzip2"),
    "text_pth": Case(text_pth, "model", _M, r"looks like a text file \(it starts with 'epoch 3"),
    "random_pt": Case(random_pt, "model", _M, r"not a readable PyTorch file: it looks like binary data"),
    "tar_pt": Case(tar_pt, "model", _M, r"tar archive"),
    "nan_weights": Case(nan_weights, "model", _M, r"NaN or Inf values in: classifier\.3\.weight"),
    "inf_weights": Case(inf_weights, "model", _M, r"NaN or Inf values in: classifier\.3\.weight"),
    "bool_weights": Case(bool_weights, "model", _M, r"wrong type: features\.0\.weight \(bool, expected float32\)"),
    "int_weights": Case(int_weights, "model", _M, r"wrong type: features\.0\.weight \(int64, expected float32\)"),
    "complex_weights": Case(complex_weights, "model", _M, r"\(complex64, expected float32\)"),
    # specs
    "empty_safetensors": Case(empty_safetensors, "spec", _M, r"empty"),
    "garbage_safetensors": Case(garbage_safetensors, "spec", _M, r"not a valid safetensors file"),
    "spec_arch_list": Case(spec_arch_list, "spec", _M, r"arch must be an architecture name.*got list"),
    "spec_fractional_classes": Case(spec_fractional_classes, "spec", _M, r"num_classes must be a whole number.*10\.5"),
    "spec_absurd_classes": Case(spec_absurd_classes, "spec", _M, r"1,000,000,000,000.*max_num_classes"),
    "spec_absurd_input": Case(spec_absurd_input, "spec", _M, r"\(1, 100000, 100000\).*max_input_pixels"),
    "spec_deep_json": Case(spec_deep_json, "spec", _M, r"nested more than 100 levels"),
    "sidecar_spec": Case(sidecar_spec, "spec", _M, r"sidecar\.json.*max_input_pixels"),
    "spec_bad_kwargs": Case(spec_bad_kwargs, "stored_spec_model", _C, r"does not accept the options \{'foo': 1\}"),
}


def read(case: Case, path: Path) -> object:
    """Run the reader of `case` on `path` (imports kdcore lazily, so the makers stay light)."""
    if case.reader in ("model", "stored_spec_model", "spec"):
        from kdcore.models.loading import load_model, read_spec
        from kdcore.models.spec import ModelSpec

        if case.reader == "spec":
            return read_spec(path)
        return load_model(path, ModelSpec(*SPEC_ARGS) if case.reader == "model" else None)
    from kdcore.data.folders import decode_image, load_labeled, load_unlabeled

    shape = case.kwargs.get("shape", (1, 8, 8))
    if case.reader == "image":
        return decode_image(path.read_bytes(), shape, path.name)
    if case.reader == "unlabeled":
        return load_unlabeled(path, shape)
    return load_labeled(path, shape, case.kwargs.get("class_names"))
