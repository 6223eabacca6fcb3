"""kdcore.models.pickle_scan: the budget walk over a pickle stream, against real torch.save output."""

from __future__ import annotations

import io
import pickle
import zipfile

import pytest
import torch

from kdcore import limits
from kdcore.models.pickle_scan import LEGACY_MAGIC, PickleRefused, PickleScan, UnsupportedPickle
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec


def data_pkl(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def scan(data: bytes) -> PickleScan:
    s = PickleScan(limits.current())
    s.scan(data)
    return s


def test_storage_elements_of_a_real_state_dict() -> None:
    sd = build_model(ModelSpec("resnet18-small", 10, (3, 32, 32))).state_dict()
    assert scan(data_pkl(sd)).elements == sum(t.numel() for t in sd.values())  # the oracle: numel


def test_shared_storage_is_counted_once() -> None:
    x = torch.zeros(10)
    assert scan(data_pkl({"a": x, "b": x[2:5], "c": x, "d": torch.ones(3)})).elements == 13


def test_legacy_format_is_five_pickles() -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4, 5)}, buf, _use_new_zipfile_serialization=False)
    s, data, pos = PickleScan(limits.current()), buf.getvalue(), 0
    pos, magic = s.scan(data, pos)
    assert magic == LEGACY_MAGIC
    for _ in range(4):
        pos, _ = s.scan(data, pos)
    assert s.elements == 20


def nested_list(depth: int) -> bytes:
    obj: list = []
    for _ in range(depth - 1):
        obj = [obj]
    return pickle.dumps(obj, protocol=2)


def test_nesting_limit_is_exact() -> None:
    scan(nested_list(100))  # [] is depth 1, so 100 nested lists are exactly at max_nesting
    with pytest.raises(PickleRefused, match=r"nested more than 100 deep \(max_nesting\)"):
        scan(nested_list(101))


def test_shared_references_are_expanded(set_limits) -> None:
    t: tuple = ()
    for _ in range(12):
        t = (t, t)  # 2^13 - 1 tuples once expanded, 12 levels deep
    data = pickle.dumps({t: 1}, protocol=2)
    scan(data)
    set_limits(max_pickle_bytes=16 * 4000)  # 4000 objects
    with pytest.raises(PickleRefused, match=r"more than 4,000 items once its shared references are expanded"):
        scan(data)


def test_bytearray_from_data_is_fine_from_a_size_is_counted(set_limits) -> None:
    assert scan(pickle.dumps({"b": bytearray(b"abc" * 100)}, protocol=2)).elements == 0
    big = b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x01\x85R."  # bytearray(2**24)
    assert scan(big).elements == 2**24
    set_limits(max_tensor_elements=2**24 - 1)
    with pytest.raises(PickleRefused, match=r"builtins\.bytearray\(\.\.\.\) would allocate 16,777,216 elements"):
        scan(big)


def test_opcodes_outside_the_weights_only_set_and_malformed_streams() -> None:
    with pytest.raises(UnsupportedPickle, match="opcode"):
        scan(pickle.dumps({"a": 1}, protocol=4))  # FRAME
    with pytest.raises(PickleRefused, match="truncated"):
        scan(data_pkl({"w": torch.zeros(2)})[:-5])
    with pytest.raises(PickleRefused, match="empty stack"):
        scan(b"\x80\x02s.")
    with pytest.raises(PickleRefused, match="not a container"):
        scan(b"\x80\x02NNa.")
