"""Safe reading of zip archives from untrusted uploads: image sets (.zip) and torch's zip-format .pt.

`zipfile` believes what an archive declares about itself: how many entries it has, where each
entry's bytes are and how large they unpack. A hostile archive lies about all three, so before
any byte is decompressed, `open_zip` checks (limits from `kdcore.limits.current()`):

1. Entries: the central directory is walked record by record, and an archive with more than
   `max_archive_entries` entries is refused before zipfile builds its in-memory index.
2. Names: every entry needs a non-empty name that decodes (UTF-8 when the archive flags it,
   else CP437); names are unique (case-insensitively when asked: torch looks names up that way).
3. Methods: only stored and deflate. bzip2, LZMA, deflate64, zstd and encrypted entries are
   refused by name: zipfile's bzip2 and LZMA readers have no bound on the output of one call.
   So are the features zipfile cannot read and would raise NotImplementedError for at the first
   read (general-purpose flag bit 5, "compressed patched data"; bit 6, strong encryption).
4. Overlap: every entry's local header and data must sit in a byte range of its own, before the
   central directory. Several entries over the same bytes (the overlapping-entries bomb: 300
   entries pointing at one 60 MiB member, from a 76 KB file) are refused without decompressing.
5. Sizes: a stored entry must declare the size it stores.

`SafeZip.read` then counts the bytes it actually decompresses, in chunks of 1 MiB, never trusting
the declared size: at most `cap` per member (the caller's: `max_file_bytes` for an image,
`max_pickle_bytes` for a data.pkl) and `max_archive_bytes` for the whole archive; a member whose
real size differs from its declared size is refused. `SafeZip.verify` reads a member the same way
without keeping its bytes (for members a third-party reader will load, e.g. torch's tensors).

A violated budget or a malformed archive is an `InputError` naming the archive and the entry
(entry names are quoted with repr: a name holding a newline keeps the message on one line);
a member whose compressed data is corrupt (bad CRC, truncated deflate stream) is a
`CorruptMemberError`, so an image loader can skip that one file.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kdcore import limits
from kdcore.errors import InputError

STORED, DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
_METHOD_NAMES = {1: "shrink", 6: "implode", 9: "deflate64", 12: "bzip2", 14: "LZMA", 93: "zstd", 95: "xz", 98: "PPMd"}
_MIB = 2**20
_CHUNK = _MIB
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # one central directory record's fixed 46 bytes
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # one local header's fixed 30 bytes
# General-purpose flag bits of an entry that zipfile cannot read (it raises NotImplementedError on open).
_UNREADABLE_FLAGS = {0x20: "compressed patched data (flag bit 5)", 0x40: "strong encryption (flag bit 6)"}
_RECREATE = "re-create the archive with a standard zip tool (your system's 'Compress' or `zip -r`)"


class CorruptMemberError(InputError):
    """One member's compressed data is damaged (CRC mismatch, truncated stream)."""


@dataclass(frozen=True)
class Member:
    """One entry of a checked archive."""

    name: str  # as stored, e.g. "train/cat/001.png"
    is_dir: bool
    declared_size: int  # what the archive claims it unpacks to; reads count the real bytes
    compressed: bool  # deflate (True) or stored (False)
    info: zipfile.ZipInfo = field(repr=False, compare=False)


class SafeZip:
    """An archive that passed the checks of `open_zip`; members are read with byte budgets."""

    def __init__(self, zf: zipfile.ZipFile, label: str, members: tuple[Member, ...]):
        self._zf = zf
        self.label = label
        self.members = members
        self._total = 0  # bytes decompressed from this archive so far

    def read(self, member: Member, cap: int, cap_name: str = "max_file_bytes") -> bytes:
        """The member's bytes, at most `cap` of them (`cap_name` is the limit named in errors)."""
        chunks: list[bytes] = []
        self._stream(member, cap, cap_name, chunks.append)
        return b"".join(chunks)

    def verify(self, member: Member, cap: int, cap_name: str) -> None:
        """Decompress the member without keeping it: its real size must match the declared size."""
        self._stream(member, cap, cap_name, lambda chunk: None)

    def _stream(self, member: Member, cap: int, cap_name: str, sink) -> None:
        if member.declared_size > cap:
            raise InputError(
                f"{member.name!r} in {self.label} unpacks to {_size(member.declared_size)}; members over "
                f"{_size(cap)} are refused ({cap_name}, a zip-bomb guard)"
            )
        budget = limits.current().max_archive_bytes
        n = 0
        try:
            with self._zf.open(member.info) as fh:
                while chunk := fh.read(min(_CHUNK, cap + 1 - n)):
                    n += len(chunk)
                    self._total += len(chunk)
                    if n > cap:
                        raise InputError(
                            f"{member.name!r} in {self.label} unpacks to more than {_size(cap)} although it declares "
                            f"{_size(member.declared_size)}; refused ({cap_name}, a zip-bomb guard)"
                        )
                    if self._total > budget:
                        raise InputError(
                            f"{self.label} unpacks to more than {_size(budget)} in total; refused "
                            "(max_archive_bytes, a zip-bomb guard). Split it into smaller archives."
                        )
                    sink(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnicodeDecodeError) as e:  # local name too
            raise CorruptMemberError(f"{member.name!r} in {self.label} is damaged ({e}); {_RECREATE}") from e
        except NotImplementedError as e:  # a zip feature zipfile cannot read that `open_zip` did not foresee
            what = f"{member.name!r} in {self.label}"
            raise InputError(f"{what} uses a zip feature that is not read ({e}); {_RECREATE}") from e
        if n != member.declared_size:
            raise InputError(
                f"{member.name!r} in {self.label} declares {member.declared_size:,} bytes but holds {n:,}; "
                f"an archive that lies about its sizes is refused. {_RECREATE}"
            )


@contextmanager
def open_zip(path: str | os.PathLike, label: str = "", casefold_names: bool = False) -> Iterator[SafeZip]:
    """Open and check the zip at `path` (guards 1-5 of the module docstring); raise InputError.

    `label` names the archive in messages (default: its file name in quotes); `casefold_names`
    refuses names that differ only in case (for archives read by torch, whose lookup ignores case).
    """
    path = Path(path)
    label = label or f"'{path.name}'"
    lim = limits.current()
    try:
        with open(path, "rb") as fp:
            _count_entries(fp, lim.max_archive_entries, label)
        zf = zipfile.ZipFile(path)
    except UnicodeDecodeError as e:
        raise InputError(
            f"{label} has an entry whose name is not valid UTF-8 although the archive marks it as UTF-8; {_RECREATE}"
        ) from e
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, NotImplementedError) as e:
        raise InputError(f"{label} is not a readable zip archive ({e}); {_RECREATE}") from e
    with zf:
        members = _check_entries(zf, path, label, casefold_names)
        yield SafeZip(zf, label, members)


def _count_entries(fp, limit: int, label: str) -> None:
    """Walk the central directory's records (46 bytes + three lengths each) without keeping them."""
    # zipfile's own end-of-archive search (stable since Python 2): [signature, ..., size, offset, ...]
    end = zipfile._EndRecData(fp)
    if end is None:
        raise zipfile.BadZipFile("no end of central directory record")
    size_cd, offset_cd = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]
    concat = end[zipfile._ECD_LOCATION] - size_cd - offset_cd  # bytes prepended to the archive
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    pos, stop, count = offset_cd + concat, offset_cd + concat + size_cd, 0
    fp.seek(pos)
    while pos + _CENTRAL.size <= stop:
        record = fp.read(_CENTRAL.size)
        if len(record) < _CENTRAL.size or record[:4] != zipfile.stringCentralDir:
            return  # malformed: zipfile reports it with its own message
        fields = _CENTRAL.unpack(record)
        skip = fields[12] + fields[13] + fields[14]  # name, extra and comment lengths
        pos += _CENTRAL.size + skip
        fp.seek(skip, os.SEEK_CUR)
        count += 1
        if count > limit:
            raise InputError(
                f"{label} has more than {limit:,} entries; refused (max_archive_entries). "
                "Split it into smaller archives."
            )


def _check_entries(zf: zipfile.ZipFile, path: Path, label: str, casefold: bool) -> tuple[Member, ...]:
    members = []
    for i, info in enumerate(zf.infolist()):
        name = info.orig_filename
        if not name:
            raise InputError(f"{label} has an entry with an empty name (entry {i + 1}); {_RECREATE}")
        if "\x00" in name:  # zipfile cuts the name there (an empty name breaks ZipInfo.is_dir)
            raise InputError(f"{label} has an entry whose name holds a NUL byte ({name!r}); {_RECREATE}")
        if info.flag_bits & 0x1:
            raise InputError(f"{name!r} in {label} is password-protected; re-create the archive without a password")
        for bit, feature in _UNREADABLE_FLAGS.items():
            if info.flag_bits & bit:
                raise InputError(f"{name!r} in {label} uses {feature}, which is not read; {_RECREATE}")
        if info.compress_type not in (STORED, DEFLATED):
            method = _METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise InputError(
                f"{name!r} in {label} is compressed with {method}; only stored and deflate entries are read "
                f"(other methods can unpack without bound). {_RECREATE}"
            )
        if info.compress_type == STORED and info.compress_size != info.file_size:
            raise InputError(
                f"{name!r} in {label} is stored uncompressed but declares {info.file_size:,} bytes for "
                f"{info.compress_size:,}; an archive that lies about its sizes is refused. {_RECREATE}"
            )
        members.append(Member(name, info.is_dir(), info.file_size, info.compress_type == DEFLATED, info))
    _check_no_overlap(zf, path, label)
    seen: set[str] = set()
    for m in members:
        key = m.name.casefold() if casefold else m.name
        if key in seen:
            raise InputError(f"{label} has two entries named {m.name!r}; {_RECREATE}")
        seen.add(key)
    return tuple(members)


def _check_no_overlap(zf: zipfile.ZipFile, path: Path, label: str) -> None:
    """Each entry's [local header, end of data) must lie before the next entry and the directory."""
    spans = []
    with open(path, "rb") as fp:
        for info in zf.infolist():
            fp.seek(max(info.header_offset, 0))
            head = fp.read(_LOCAL.size)
            if info.header_offset < 0 or len(head) < _LOCAL.size or head[:4] != zipfile.stringFileHeader:
                raise InputError(f"{info.orig_filename!r} in {label} points outside the archive; {_RECREATE}")
            fields = _LOCAL.unpack(head)
            data_start = info.header_offset + _LOCAL.size + fields[10] + fields[11]  # + name + extra
            spans.append((info.header_offset, data_start + info.compress_size, info.orig_filename))
    if not spans:  # an archive without entries
        return
    spans.sort()
    bounds = [*(start for start, _, _ in spans[1:]), zf.start_dir]
    for (_, end, name), next_start in zip(spans, bounds, strict=True):
        if end > next_start:
            raise InputError(
                f"{label} has entries that overlap ({name!r} and the entry after it share bytes); overlapping "
                f"entries are a zip-bomb technique and are refused. {_RECREATE}"
            )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / _MIB:.0f} MiB" if n >= _MIB else f"{n:,} bytes"
