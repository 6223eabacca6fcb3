"""A generator for hostile model files (the seed of the issue-11 cases that the dashboard must survive)."""

from __future__ import annotations

import zipfile
from pathlib import Path


def deep_tuple_pickle(depth: int) -> bytes:
    """A pickle of `{((((),),),): 1}` with the tuple nested `depth` deep, written as opcodes:
    EMPTY_TUPLE, then TUPLE1 `depth` times. `pickle` itself would recurse while building it."""
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"K\x01s."


def deep_tuple_pt(path: Path, depth: int = 1_000_000) -> Path:
    """That pickle as `torch.save` lays it out: a stored zip with `<archive>/data.pkl`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", deep_tuple_pickle(depth))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return path
