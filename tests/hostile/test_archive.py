"""kdcore.archive: the checks made before any byte is decompressed, and the byte counting after."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import pytest

from kdcore.archive import CorruptMemberError, open_zip
from kdcore.errors import InputError
from tests.hostile.corpus import RawEntry, deflate_zeros, write_raw_zip


def _zip(path: Path, files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_members_read_back_exactly_and_folders_are_listed(tmp_path: Path) -> None:
    files = {"a/": b"", "a/x.bin": bytes(range(256)) * 300, "b/y.txt": b"hello", "c/empty": b""}
    with open_zip(_zip(tmp_path / "ok.zip", files)) as z:
        assert [(m.name, m.is_dir) for m in z.members] == [(n, n.endswith("/")) for n in files]
        for m in z.members:
            assert z.read(m, 2**20) == files[m.name]
            assert m.declared_size == len(files[m.name])


def test_deflate_zeros_is_a_valid_stream() -> None:
    payload, crc = deflate_zeros(5 * 2**20 + 7, block=2**20)
    data = zlib.decompress(payload, -15)
    assert data == bytes(5 * 2**20 + 7) and zlib.crc32(data) == crc


def test_cap_per_member_and_per_archive(tmp_path: Path, set_limits) -> None:
    path = _zip(tmp_path / "z.zip", {"a": bytes(3000), "b": bytes(3000)})
    with open_zip(path) as z:
        with pytest.raises(InputError, match=r"unpacks to 3,000 bytes.*over 2,999 bytes are refused \(my_cap"):
            z.read(z.members[0], 2999, "my_cap")
    set_limits(max_archive_bytes=5000)
    with open_zip(path) as z:
        assert len(z.read(z.members[0], 3000)) == 3000
        with pytest.raises(InputError, match=r"more than 5,000 bytes in total.*max_archive_bytes"):
            z.read(z.members[1], 3000)


def test_entry_count_is_checked_before_zipfile_indexes_them(tmp_path: Path, set_limits) -> None:
    path = _zip(tmp_path / "many.zip", {f"f{i}": b"" for i in range(50)})
    set_limits(max_archive_entries=49)
    with pytest.raises(InputError, match="more than 49 entries"):
        with open_zip(path):
            pass
    set_limits(max_archive_entries=50)
    with open_zip(path) as z:
        assert len(z.members) == 50


def test_duplicate_names_and_case_folding(tmp_path: Path) -> None:
    png = b"x"
    entries = [RawEntry(b"A/data.pkl", png, 0, zlib.crc32(png), 1), RawEntry(b"a/DATA.pkl", png, 0, zlib.crc32(png), 1)]
    path = write_raw_zip(tmp_path / "case.zip", entries)
    with open_zip(path) as z:  # distinct names for an image set (zips made on Linux can do this)
        assert len(z.members) == 2
    with pytest.raises(InputError, match=r"two entries named 'a/DATA\.pkl'"):
        with open_zip(path, casefold_names=True):
            pass


def test_damaged_member_is_a_corrupt_member_error(tmp_path: Path) -> None:
    data = b"some bytes" * 100
    path = write_raw_zip(tmp_path / "crc.zip", [RawEntry(b"x", data, 0, zlib.crc32(data) ^ 1, len(data))])
    with open_zip(path) as z, pytest.raises(CorruptMemberError, match=r"'x' in 'crc\.zip' is damaged"):
        z.read(z.members[0], 2**20)


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "n.zip").write_bytes(b"PK\3\4" + bytes(100))
    with pytest.raises(InputError, match="not a readable zip archive"):
        with open_zip(tmp_path / "n.zip"):
            pass


def test_encrypted_member_is_refused(tmp_path: Path) -> None:
    path = write_raw_zip(tmp_path / "enc.zip", [RawEntry(b"a/x.png", b"\0" * 12, 0, 0, 12, flags=1)])
    with pytest.raises(InputError, match="password-protected"):
        with open_zip(path):
            pass
