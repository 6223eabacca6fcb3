"""Hostile `.onnx` uploads, each read through `kdcore.sandbox` as the dashboard and the jobs read
them, each refused with one clear ModelLoadError: no traceback, no crash, no file read by path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from kdcore import sandbox
from kdcore.errors import ModelLoadError
from tests.models.test_onnx import CNN_SHAPE, crafted, export, paper_cnn


def _input():
    return [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])]


def _output():
    return [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])]


def _model(nodes, inits, path: Path, opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "g", _input(), _output(), inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def malformed_protobuf(d: Path) -> Path:
    (p := d / "m.onnx").write_bytes(b"\x0a\xff\xff\xff\xff\x0fnot really a graph")  # field 1, length 2^32
    return p


def truncated(d: Path) -> Path:
    data = export(paper_cnn(), CNN_SHAPE, d / "whole.onnx").read_bytes()
    (p := d / "m.onnx").write_bytes(data[: len(data) // 2])
    return p


def protobuf_but_not_onnx(d: Path) -> Path:
    (p := d / "m.onnx").write_bytes(b"\x08\x07")  # ir_version = 7 and nothing else
    return p


def huge_declared_dims(d: Path) -> Path:
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[10**6, 10**6])  # 4 TB declared, no data
    return _model(_gemm(), [w, _zeros("b", 3)], d / "m.onnx")


def dims_larger_than_data(d: Path) -> Path:
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[3000, 16], raw_data=b"\0" * 16)
    return _model(_gemm(), [w, _zeros("b", 3)], d / "m.onnx")


def negative_dims(d: Path) -> Path:
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[-3, -16], raw_data=b"\0" * 16)
    return _model(_gemm(), [w, _zeros("b", 3)], d / "m.onnx")


def external_data(d: Path, location: str) -> Path:
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[3, 16], data_location=TensorProto.EXTERNAL)
    w.external_data.add(key="location", value=location)
    w.external_data.add(key="length", value="192")
    return _model(_gemm(), [w, _zeros("b", 3)], d / "m.onnx")


def external_data_in_a_subgraph(d: Path) -> Path:
    w = TensorProto(name="k", data_type=TensorProto.FLOAT, dims=[3], data_location=TensorProto.EXTERNAL)
    w.external_data.add(key="location", value="/etc/shadow")
    branch = helper.make_graph([helper.make_node("Constant", [], ["y"], value=w)], "b", [], _output())
    cond = numpy_helper.from_array(np.array(True), "c")
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)]
    return _model(nodes, [cond], d / "m.onnx")


def custom_domain(d: Path) -> Path:
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Evil", ["f"], ["y"], domain="com.vendor")]
    return _model(nodes, [], d / "m.onnx")


def nested_graph_bomb(d: Path, depth: int = 200) -> Path:
    """If inside If inside If ... `depth` levels, written as raw protobuf (the protobuf library
    itself refuses to build a message nested this deep)."""
    graph = _field(1, _field(1, b"c") + _field(2, b"y") + _field(4, b"Identity"))  # the leaf: node y = c
    for _ in range(depth):
        attr = _field(1, b"then_branch") + _field(6, graph) + _varint(20 << 3) + bytes([5])  # type = GRAPH
        graph = _field(1, _field(1, b"c") + _field(2, b"y") + _field(4, b"If") + _field(5, attr))
    graph += _field(12, _field(1, b"y"))  # the top graph's output (a ValueInfoProto named y)
    opset = _field(1, b"") + bytes([2 << 3, 17])  # domain "", version 17
    (p := d / "m.onnx").write_bytes(bytes([1 << 3, 8]) + _field(7, graph) + _field(8, opset))
    return p


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def wide_subgraph_bomb(d: Path) -> Path:
    """One small subgraph referenced by 2,000 If nodes: cheap to store, large once walked."""
    cond = numpy_helper.from_array(np.array(True), "c")
    leaf = helper.make_graph([helper.make_node("Identity", ["c"], ["y"])], "leaf", [], _output())
    nodes = [helper.make_node("If", ["c"], [f"y{i}"], then_branch=leaf, else_branch=leaf) for i in range(2000)]
    nodes.append(helper.make_node("Identity", ["y0"], ["y"]))
    return _model(nodes, [cond], d / "m.onnx")


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _gemm():
    return [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]


def _zeros(name: str, n: int):
    return numpy_helper.from_array(np.zeros(n, np.float32), name)


CASES = {
    "malformed protobuf": (malformed_protobuf, "not a valid ONNX file"),
    "truncated": (truncated, "not a valid ONNX file"),
    "protobuf but not onnx": (protobuf_but_not_onnx, "not an ONNX model"),
    "huge declared dims": (huge_declared_dims, "max_tensor_elements"),
    "dims larger than data": (dims_larger_than_data, "declares shape .* its data does not have that size"),
    "negative dims": (negative_dims, "negative size"),
    "external data by absolute path": (lambda d: external_data(d, "/etc/passwd"), "external file"),
    "external data by relative path": (lambda d: external_data(d, "../../../home/secret.bin"), "external file"),
    "external data in a subgraph": (external_data_in_a_subgraph, "external file"),
    "custom domain": (custom_domain, "outside the ONNX standard"),
    "nested graph bomb": (nested_graph_bomb, "not a valid ONNX file|max_nesting"),
    "nested graph, parseable depth": (lambda d: nested_graph_bomb(d, 30), "onnx.checker|cannot be converted.*If"),
    "wide subgraph bomb": (wide_subgraph_bomb, "cannot be converted.*If"),
    "empty file": (lambda d: _written(d / "m.onnx", b""), "empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reader", ["read_spec", "load_model"])
def test_a_hostile_onnx_file_is_one_clear_refusal(case, reader, tmp_path):
    make, message = CASES[case]
    path = make(tmp_path)
    with pytest.raises(ModelLoadError, match=message) as e:
        getattr(sandbox, reader)(path)
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text and len(text) < 700


def test_a_valid_file_still_reads_after_the_hostile_ones(tmp_path):
    spec = sandbox.read_spec(crafted(tmp_path / "ok.onnx"))
    assert (spec.arch, spec.num_classes) == ("onnx", 3)
