"""Hypothesis strategies for the fuzz tests: byte mutations of seed files, and inputs built by structure.

Blind mutation (`mutated`) flips, overwrites, inserts, deletes, repeats and truncates bytes of a seed,
with positions drawn near the start, near the end (a zip's central directory) or anywhere.
Structure-aware builders keep the outer format valid so that the mutation reaches the inner
parser: a torch.save zip around a generated or mutated `data.pkl` (`with_data_pkl`), a
safetensors file around a generated header (`safetensors_files`), a zip from generated entries
(`zip_files`), an image folder from generated names and bytes (`write_folder`), JSON of any shape
(`json_values`). Everything is small: the bombs here are small-parameter versions of the corpus.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

from hypothesis import strategies as st

from tests.hostile.corpus import RawEntry, write_raw_zip

_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x2E, 0x28, 0x85, 0x4B, 0x58)  # incl. pickle's STOP, MARK, TUPLE1
_INT32 = (0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**16, 100_000, 12_000)
_KINDS = ("flip", "byte", "int32", "insert", "delete", "repeat", "truncate")


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], max_ops: int = 6) -> bytes:
    """One of `seeds` with 0 to `max_ops` mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_ops))):
        n = len(data)
        pos = draw(st.one_of(st.integers(0, min(n, 512)), st.integers(max(0, n - 512), n), st.integers(0, n)))
        kind = draw(st.sampled_from(_KINDS))
        if kind == "flip" and pos < n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos : pos + 1] = bytes([draw(st.sampled_from(_BYTES))])
        elif kind == "int32":
            data[pos : pos + 4] = struct.pack(draw(st.sampled_from("<>")) + "I", draw(st.sampled_from(_INT32)))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(max_size=24))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "repeat":
            chunk = bytes(data[pos : pos + draw(st.integers(1, 64))])
            data[pos:pos] = chunk * draw(st.integers(1, 8))
        elif kind == "truncate":
            del data[pos:]
    return bytes(data)


# --- pickles ---------------------------------------------------------------------------------------

_GLOBALS = (
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ctorch._utils\n_rebuild_parameter\n",
    b"ctorch._utils\n_rebuild_qtensor\n",
    b"ccollections\nOrderedDict\n",
    b"cbuiltins\nbytearray\n",
    b"cbuiltins\nset\n",
    b"ctorch\nFloatStorage\n",
    b"ctorch\nFloatTensor\n",
    b"ctorch\nLongStorage\n",
    b"ctorch\nSize\n",
    b"ctorch\nfloat32\n",
    b"c__builtin__\nset\n",
    b"cos\nsystem\n",
)
_FIXED = (b"N", b")", b"]", b"}", b"(", b"t", b"\x85", b"\x86", b"\x87", b"a", b"s", b"e", b"u", b"b")
_FIXED += (b"R", b"\x81", b"Q", b"\x88", b"\x89", b"l", b"d", b"\x8f", b"0", b"2", b"\x94", b"\x95")


@st.composite
def _pickle_token(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind < 3:
        return draw(st.sampled_from(_FIXED))
    if kind == 3:
        return draw(st.sampled_from(_GLOBALS))
    if kind == 4:
        return b"K" + bytes([draw(st.integers(0, 255))])
    if kind == 5:
        return b"J" + struct.pack("<i", draw(st.integers(-(2**31), 2**31 - 1)))
    if kind == 6:
        n = draw(st.integers(-(2**70), 2**70))
        raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw
    if kind == 7:
        text = draw(st.sampled_from(["storage", "cpu", "0", "1", "w", "state_dict", "a" * 300]))
        return b"X" + struct.pack("<I", len(text)) + text.encode()
    if kind == 8:
        return (
            draw(st.sampled_from(b"hqjr")).to_bytes(1, "little")
            + bytes([draw(st.integers(0, 3))])
            + (b"\x00\x00\x00" if draw(st.booleans()) else b"")
        )
    return b"G" + struct.pack(">d", draw(st.floats(allow_nan=True, allow_infinity=True)))


def pickle_programs() -> st.SearchStrategy[bytes]:
    """Protocol-2 opcode sequences from the opcodes torch.save writes (and a few it does not)."""
    return st.lists(_pickle_token(), max_size=40).map(lambda ts: b"\x80\x02" + b"".join(ts) + b".")


def zip_members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def with_data_pkl(members: list[tuple[str, bytes]], pkl: bytes) -> bytes:
    """A torch.save-layout zip with `members` (from a real torch.save file) and `pkl` as its data.pkl."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, pkl if name.endswith("/data.pkl") else data)
    return buf.getvalue()


# --- safetensors -----------------------------------------------------------------------------------

_DTYPES = ("F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "C64", "XX", "")
_DIMS = st.one_of(st.integers(0, 12), st.sampled_from([2**31, 2**32, 2**63 - 1, 10**6]), st.integers(-3, -1))


@st.composite
def safetensors_files(draw: st.DrawFn, spec_texts: list[str]) -> bytes:
    """8-byte header length, a generated JSON header (often wrong), then data bytes."""
    header: dict = {}
    offset = 0
    for i in range(draw(st.integers(0, 4))):
        shape = draw(st.lists(_DIMS, max_size=4))
        n = draw(st.integers(0, 64))
        start = draw(st.sampled_from([offset, offset + 1, 0, max(offset - 4, 0)]))
        ends = [start + n, start + n + 1, 2**40, max(start - 1, 0)]
        offsets = [start, draw(st.sampled_from(ends))]
        entry = {"dtype": draw(st.sampled_from(_DTYPES)), "shape": shape, "data_offsets": offsets}
        if draw(st.integers(0, 9)) == 0:
            entry = draw(json_values())
        header[draw(st.sampled_from([f"w{i}", "features.0.weight", "", "__metadata__"]))] = entry
        offset = start + n
    if draw(st.booleans()):
        spec = draw(st.one_of(st.sampled_from(spec_texts), json_values().map(json.dumps), st.text(max_size=30)))
        header["__metadata__"] = {"kdcore_spec": spec} if draw(st.integers(0, 5)) else draw(json_values())
    text = json.dumps(header).encode() + b" " * draw(st.integers(0, 8))
    declared = draw(st.sampled_from([len(text), len(text), len(text) + 1, len(text) - 1, 2**63, 0]))
    tail = draw(st.binary(max_size=96)) if draw(st.booleans()) else bytes(offset)
    return struct.pack("<Q", max(declared, 0)) + text + tail


# --- JSON ------------------------------------------------------------------------------------------

_NUMBERS = st.one_of(
    st.integers(),
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, 3, 10, 10.0, 10.5, -1, 2**63, 1e308, 10**12, True, False]),
)
_SCALARS = st.one_of(st.none(), _NUMBERS, st.text(max_size=12), st.sampled_from(["paper-cnn", "tv:resnet18", " "]))


def json_values(max_leaves: int = 12) -> st.SearchStrategy[object]:
    return st.recursive(
        _SCALARS,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=max_leaves,
    )


_SPEC_KEYS = ("arch", "num_classes", "input_shape", "mean", "std", "class_names", "format_version", "extra")


@st.composite
def spec_dicts(draw: st.DrawFn) -> dict:
    """A spec-shaped object: the known keys (some), each with a plausible or arbitrary value."""
    plausible = {
        "arch": st.sampled_from(["paper-cnn", "tv:resnet18", "resnet18", "", "nope"]),
        "num_classes": st.one_of(st.integers(-2, 12), _NUMBERS),
        "input_shape": st.one_of(st.lists(st.one_of(st.integers(-1, 64), _NUMBERS), max_size=4), _SCALARS),
        "mean": st.lists(_NUMBERS, max_size=4),
        "std": st.lists(_NUMBERS, max_size=4),
        "class_names": st.lists(_SCALARS, max_size=12),
        "format_version": _NUMBERS,
        "extra": st.dictionaries(st.text(max_size=8), json_values(4), max_size=3),
    }
    d = {}
    for key in _SPEC_KEYS:
        if draw(st.integers(0, 3)):
            d[key] = draw(st.one_of(plausible[key], json_values(4)) if draw(st.integers(0, 4)) == 0 else plausible[key])
    if draw(st.integers(0, 9)) == 0:
        d[draw(st.text(max_size=8))] = draw(json_values(4))
    return d


# --- archives and folders --------------------------------------------------------------------------

_ZIP_NAMES = ("a/x.png", "b/y.jpg", "a/", "x.png", "__MACOSX/a/._x.png", ".hidden/x.png", "a\\b\\c.png", "/b/z.png")
_ZIP_NAMES += ("../../x.png", "a//b.png", "A/X.PNG", "c/d/e/f.gif", "b/", "a/x.png")
_NAME_BYTES = st.one_of(
    st.sampled_from(_ZIP_NAMES).map(str.encode),
    st.text(max_size=16).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=16),
)


@st.composite
def zip_files(draw: st.DrawFn, payloads: st.SearchStrategy[bytes]) -> bytes:
    """A zip of 0-6 generated entries: names, methods, flags, CRCs, declared sizes and the central
    directory's listing (with repeats: overlapping entries) drawn independently."""
    entries = []
    for _ in range(draw(st.integers(0, 6))):
        data = draw(payloads)
        method = draw(st.sampled_from([0, 0, 8, 8, 12, 14, 9]))
        if method == 8:
            c = zlib.compressobj(draw(st.integers(0, 9)), zlib.DEFLATED, -15)
            payload = c.compress(data) + c.flush()
        elif method == 12:
            payload = bz2.compress(data)
        else:
            payload = data
        crc = zlib.crc32(data) if draw(st.integers(0, 5)) else draw(st.integers(0, 2**32 - 1))
        size = draw(st.sampled_from([len(data)] * 4 + [0, len(data) + 1, max(len(data) - 1, 0), 2**32 - 1]))
        csize = None if draw(st.integers(0, 5)) else draw(st.integers(0, 2**32 - 1))
        flags = draw(st.sampled_from([0, 0, 0x800, 0x1, 0x8]))
        entries.append(RawEntry(draw(_NAME_BYTES), payload, method, crc, size, flags, csize))
    listing = None
    if entries and draw(st.integers(0, 4)) == 0:
        index = st.integers(0, len(entries) - 1)
        listing = [(i, entries[i].name) for i in draw(st.lists(index, min_size=1, max_size=8))]
    buf = _MemoryPath()
    write_raw_zip(buf, entries, listing)  # type: ignore[arg-type]
    return buf.data


class _MemoryPath:
    """Stands in for a Path in `write_raw_zip`, which only calls `write_bytes`."""

    data = b""

    def write_bytes(self, data: bytes) -> int:
        self.data = data
        return len(data)


_FOLDER_NAMES = st.one_of(
    st.sampled_from(["a", "b", "0", "1", "cat", ".git", "__MACOSX", "A", "=cmd", " ", "é", "日本"]),
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12),
).filter(lambda s: s not in (".", "..") and len(s.encode()) < 200)
_FILE_NAMES = st.tuples(
    st.one_of(st.sampled_from(["x", "0", ".x", "Thumbs", "desktop"]), _FOLDER_NAMES),
    st.sampled_from([".png", ".jpg", ".PNG", ".gif", ".tif", ".bmp", ".webp", ".txt", "", ".db", ".ini"]),
).map("".join)


@st.composite
def folder_trees(draw: st.DrawFn, payloads: st.SearchStrategy[bytes]) -> list[tuple[tuple[bytes, ...], object]]:
    """A folder as (path parts, content): bytes for a file, "fifo", "dir", ("link", target)."""
    tree: list[tuple[tuple[bytes, ...], object]] = []
    for cls in draw(st.lists(_FOLDER_NAMES, max_size=4, unique=True)):
        base = (cls.encode(),)
        tree.append((base, "dir"))
        if draw(st.integers(0, 5)) == 0:
            base = (*base, b"sub")
            tree.append((base, "dir"))
        for fn in draw(st.lists(_FILE_NAMES, max_size=3, unique=True)):
            content = draw(st.one_of(payloads, st.sampled_from(["fifo", ("link", "/dev/zero"), ("link", "..")])))
            tree.append(((*base, fn.encode()), content))
        if draw(st.integers(0, 9)) == 0:
            tree.append(((*base, b"\xff\xfe.png"), draw(payloads)))  # a name that is not UTF-8
    return tree


def write_folder(root: Path, tree: list[tuple[tuple[bytes, ...], object]]) -> Path:
    os.makedirs(root, exist_ok=True)
    for parts, content in tree:
        path = os.path.join(os.fsencode(root), *parts)
        if content == "dir":
            os.makedirs(path, exist_ok=True)
        elif content == "fifo":
            os.mkfifo(path)
        elif isinstance(content, tuple):
            os.symlink(content[1], path)
        else:
            with open(path, "wb") as f:
                f.write(content)  # type: ignore[arg-type]
    return root
