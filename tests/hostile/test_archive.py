"""kdcore.archive: the checks made before any byte is decompressed, and the byte counting after."""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from kdcore.archive import CorruptMemberError, Member, SafeZip, open_zip
from kdcore.errors import InputError, ModelLoadError
from kdcore.models.loading import read_state_dict
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


# --- entries zipfile cannot read: a one-line refusal, never its NotImplementedError ------------------


def _mutated_pt(path: Path, entry: str, *, flags: int = 0, method: int | None = None, version: int | None = None):
    """A real torch.save file whose entry ending in `entry` is edited in place, in its local header and
    its central directory record alike: flag bits ORed in, the compression method or the version
    needed to extract replaced."""
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        infos, pos = zf.infolist(), zf.start_dir
    target = next(i for i in infos if i.filename.endswith(entry))
    local = target.header_offset
    assert data[local : local + 4] == b"PK\3\4"
    for info in infos:
        assert data[pos : pos + 4] == b"PK\1\2"
        if info is target:  # local header: version at 4, flags at 6, method at 8; central: 6, 8, 10
            for flag_at, method_at, version_at in ((local + 6, local + 8, local + 4), (pos + 8, pos + 10, pos + 6)):
                struct.pack_into("<H", data, flag_at, struct.unpack_from("<H", data, flag_at)[0] | flags)
                if method is not None:
                    struct.pack_into("<H", data, method_at, method)
                if version is not None:
                    data[version_at] = version
        pos += 46 + sum(struct.unpack_from("<3H", data, pos + 28))  # + name, extra and comment lengths
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("entry", "edit", "message"),
    [
        ("data.pkl", {"flags": 0x20}, "'m/data.pkl' in m.pt uses compressed patched data (flag bit 5)"),
        ("data/0", {"flags": 0x20}, "'m/data/0' in m.pt uses compressed patched data (flag bit 5)"),
        ("data.pkl", {"flags": 0x40}, "uses strong encryption (flag bit 6)"),
        ("data/0", {"flags": 0x41}, "'m/data/0' in m.pt is password-protected"),
        ("data.pkl", {"method": 99}, "'m/data.pkl' in m.pt is compressed with method 99"),
        ("data.pkl", {"method": 9}, "is compressed with deflate64"),
        ("data.pkl", {"version": 99}, "not a readable zip archive (zip file version 9.9)"),
    ],
)
def test_a_pt_whose_entry_zipfile_cannot_read_is_a_one_line_refusal(tmp_path: Path, entry, edit, message) -> None:
    path = _mutated_pt(tmp_path / "m.pt", entry, **edit)
    with pytest.raises(ModelLoadError, match=re.escape(message)) as caught:
        read_state_dict(path)
    assert "\n" not in str(caught.value)


def test_an_image_zip_with_flag_bit_5_is_refused_by_open_zip(tmp_path: Path) -> None:
    path = write_raw_zip(tmp_path / "p.zip", [RawEntry(b"a/x.png", b"x", 0, zlib.crc32(b"x"), 1, flags=0x20)])
    with pytest.raises(InputError, match=r"'a/x\.png' in 'p\.zip' uses compressed patched data"):
        with open_zip(path):
            pass


def test_a_read_never_lets_zipfiles_not_implemented_error_out(tmp_path: Path) -> None:
    """The net under `open_zip`'s checks: a member it did not foresee is still a refusal."""
    path = write_raw_zip(tmp_path / "p.zip", [RawEntry(b"x", b"x", 0, zlib.crc32(b"x"), 1, flags=0x20)])
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
        with pytest.raises(InputError, match=r"'x' in 'p\.zip' uses a zip feature that is not read \(compressed"):
            SafeZip(zf, "'p.zip'", ()).read(Member("x", False, 1, False, info), 10)
