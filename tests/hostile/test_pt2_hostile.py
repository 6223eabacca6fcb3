"""Crafted torch.export archives: every way a .pt2 can carry code, and the zip tricks, are refused.

Each archive is a real `torch.export.save` output with one part replaced. The payloads are real:
`test_the_payloads_fire_under_torch_export_load` runs torch's own loader on them in a subprocess
and sees each canary file appear. Through kdcore (the sandboxed `read_spec` and `load_model`,
then the reader directly) each is a ModelLoadError and no canary is ever written.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from kdcore import sandbox
from kdcore.errors import ModelLoadError
from kdcore.models import pt2file
from kdcore.models.pt2program import _is_expr
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from tests.hostile.corpus import RawEntry, deflate_zeros, write_raw_zip

MODEL_JSON, WEIGHTS = "models/model.json", "data/weights/model_weights_config.json"
CONSTANTS, SAMPLE = "data/constants/model_constants_config.json", "data/sample_inputs/model.pt"


class Payload:
    """Unpickling this runs `touch <canary>` through os.system."""

    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.canary)}",))


def torch_saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelSpec("paper-cnn", 10, (1, 8, 8))).eval()
    path = tmp_path_factory.mktemp("good") / "good.pt2"
    ep = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, path)
    return path


def members(path: Path) -> dict[str, bytes]:
    """The archive's members by their name inside its folder (the folder is `good/`)."""
    with zipfile.ZipFile(path) as z:
        return {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}


def write(path: Path, parts: dict[str, bytes], folder: str = "good") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in parts.items():
            z.writestr(f"{folder}/{name}", data)
    return path


def edit_json(parts: dict[str, bytes], name: str, change) -> dict[str, bytes]:
    obj = json.loads(parts[name])
    change(obj)
    return {**parts, name: json.dumps(obj).encode()}


# --- the payloads: weights, constants, sample inputs ------------------------------------------


def pickled_weight(good: Path, out: Path, canary: Path) -> Path:
    """A weight whose config says use_pickle (torch: torch.load(weights_only=False))."""
    parts = members(good)

    def change(cfg):
        cfg["config"]["features.0.weight"]["use_pickle"] = True

    parts = edit_json(parts, WEIGHTS, change)
    file = json.loads(parts[WEIGHTS])["config"]["features.0.weight"]["path_name"]
    parts[f"data/weights/{file}"] = torch_saved(Payload(canary))
    return write(out / "weight.pt2", parts)


def pickled_constant(good: Path, out: Path, canary: Path) -> Path:
    """A tensor constant marked use_pickle (torch: torch.load(weights_only=False))."""
    parts = members(good)
    meta = {"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
    parts = edit_json(parts, CONSTANTS, lambda cfg: cfg["config"].update(c=meta))
    parts["data/constants/tensor_0"] = torch_saved(Payload(canary))
    return write(out / "constant.pt2", parts)


def opaque_constant(good: Path, out: Path, canary: Path) -> Path:
    """An opaque-object constant (torch: pickle.loads)."""
    parts = members(good)
    meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
    parts = edit_json(parts, CONSTANTS, lambda cfg: cfg["config"].update(c=meta))
    parts["data/constants/opaque_obj_0"] = pickle.dumps(Payload(canary), protocol=2)
    return write(out / "opaque.pt2", parts)


def sample_inputs(good: Path, out: Path, canary: Path) -> Path:
    """Sample inputs the weights-only unpickler refuses (torch retries with weights_only=False)."""
    parts = members(good)
    parts[SAMPLE] = torch_saved(((torch.zeros(1),), {"x": Payload(canary)}))
    return write(out / "sample.pt2", parts)


PAYLOADS = {
    "pickled_weight": (pickled_weight, "pickled object"),
    "pickled_constant": (pickled_constant, "pickled object"),
    "opaque_constant": (opaque_constant, "custom object"),
    "sample_inputs": (sample_inputs, "pickled object"),
}

TORCH_EXPORT_LOAD = r"""
import sys, torch
for path in sys.argv[1:]:
    try:
        torch.export.load(path)
    except Exception:
        pass
"""


def test_the_payloads_fire_under_torch_export_load(good, tmp_path):
    paths, canaries = [], []
    for name, (make, _) in PAYLOADS.items():
        canaries.append(tmp_path / f"proof_{name}")
        paths.append(str(make(good, tmp_path, canaries[-1])))
    subprocess.run([sys.executable, "-c", TORCH_EXPORT_LOAD, *paths], timeout=300, capture_output=True)
    assert [c.name for c in canaries if not c.exists()] == []


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_a_payload_is_refused_and_never_runs(good, tmp_path, name):
    make, match = PAYLOADS[name]
    canary = tmp_path / "canary"
    path = make(good, tmp_path, canary)
    for read in (sandbox.read_spec, sandbox.load_model, pt2file.read_state_dict, pt2file.load_graph):
        with pytest.raises(ModelLoadError, match=match) as e:
            read(path)
        assert "was not loaded" in str(e.value) or "custom object" in str(e.value)
    assert not canary.exists()


def test_a_pickled_weight_that_is_a_plain_tensor_is_read(good, tmp_path):
    parts = edit_json(members(good), WEIGHTS, lambda c: c["config"]["features.0.weight"].update(use_pickle=True))
    file = json.loads(parts[WEIGHTS])["config"]["features.0.weight"]["path_name"]
    weight = pt2file.read_state_dict(good)["features.0.weight"]
    parts[f"data/weights/{file}"] = torch_saved(weight)
    got = pt2file.read_state_dict(write(tmp_path / "p.pt2", parts))
    assert torch.equal(got["features.0.weight"], weight)


# --- code in the program JSON ----------------------------------------------------------------


def _first_node(target: str):
    def change(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = target

    return change


def _expr(text: str):
    def change(program):
        values = program["graph_module"]["graph"]["tensor_values"]
        values["x"]["sizes"][0]["as_expr"]["expr_str"] = text

    return change


def _subgraph(program):
    node = program["graph_module"]["graph"]["nodes"][0]
    node["inputs"][0]["arg"] = {"as_graph": {"name": "g", "graph": {}}}


def _treespec(kind: str):
    """The root call signature's in_spec with a node torch would import a module for."""
    enum = json.dumps([{"__enum__": True, "fqn": "antigravity:x", "name": "y"}])
    node = {
        "defaultdict": {"type": "collections.defaultdict", "context": "{}", "children_spec": []},
        "enum": {"type": "builtins.list", "context": enum, "children_spec": []},
    }[kind]

    def change(program):
        program["graph_module"]["module_call_graph"][0]["signature"]["in_spec"] = json.dumps([1, node])

    return change


PROGRAMS = {
    "os.system via torch": (_first_node("torch.serialization.os.system"), "does not run"),
    "builtins.eval": (_first_node("builtins.eval"), "does not run"),
    "aten.from_file": (_first_node("torch.ops.aten.from_file.default"), "does not run"),
    "extension op": (_first_node("#custom:evil"), "does not run"),
    "sympify code": (_expr("__import__('os').system('touch {canary}')"), "symbolic size"),
    "sympy attribute": (_expr("Symbol('s77').__class__"), "symbolic size"),
    "subgraph": (_subgraph, "as_graph"),
    "treespec defaultdict": (_treespec("defaultdict"), "defaultdict"),
    "treespec enum": (_treespec("enum"), "JSON objects"),
    "custom object input": (
        lambda p: p["graph_module"]["signature"]["input_specs"].append({"custom_obj": {}}),
        "custom_obj",
    ),
    "odd state name": (
        lambda p: p["graph_module"]["signature"]["input_specs"][0]["parameter"].update(parameter_name="a[0]"),
        "dotted Python name",
    ),
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_code_in_the_program_json_is_refused(good, tmp_path, name):
    change, match = PROGRAMS[name]
    canary = tmp_path / "canary"
    parts = members(good)
    parts = {**parts, MODEL_JSON: parts[MODEL_JSON].replace(b"{canary}", str(canary).encode())}
    program = json.loads(parts[MODEL_JSON])
    change(program)
    text = json.dumps(program).replace("{canary}", str(canary))
    path = write(tmp_path / "p.pt2", {**parts, MODEL_JSON: text.encode()})
    with pytest.raises(ModelLoadError, match=match):
        sandbox.read_spec(path)
    with pytest.raises(ModelLoadError, match=match):
        pt2file.read_state_dict(path)
    assert not canary.exists()


def test_guards_code_is_dropped_not_run(good, tmp_path):
    """ExportedProgram.module() exec's these strings; kdcore never builds the guards."""
    canary = tmp_path / "canary"
    breakout = f"1, '')\n__import__('os').system('touch {canary}')\nif (1"
    guard = f"__import__('os').system('touch {canary}') == 0"
    parts = edit_json(members(good), MODEL_JSON, lambda p: p.update(guards_code=[guard, breakout]))
    path = write(tmp_path / "guards.pt2", parts)
    model, spec = sandbox.load_model(path)
    with torch.no_grad():
        assert model(torch.zeros(3, *spec.input_shape)).shape == (3, 10)
    assert not canary.exists()


def test_the_expression_grammar():
    for ok in ("Symbol('s77', positive=True, integer=True)", "s0", "2*s77 + 1", "FloorDiv(s0, 2)", "Max(1, s1)"):
        assert _is_expr(ok), ok
    for bad in ("s0.func", "__import__('os')", "s0**99999999", "eval('1')", "'a' + 'b'", "lambda: 0", "[s0]", 7):
        assert not _is_expr(bad), bad


# --- not a torch.export archive, and zip tricks --------------------------------------------------


def _torchscript(tmp_path: Path) -> Path:
    path = tmp_path / "script.pt2"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    return path


def _torch_save(tmp_path: Path) -> Path:
    path = tmp_path / "state.pt2"
    torch.save({"w": torch.zeros(2)}, path)
    return path


def _lying_weight(good: Path, tmp_path: Path) -> Path:
    """The largest weight replaced by a deflate stream of 256 MiB that declares the weight's size."""
    entries = []
    with zipfile.ZipFile(good) as z:
        infos = z.infolist()
        big = max(infos, key=lambda i: i.file_size)
        for info in infos:
            data = z.read(info)
            if info is big:
                payload, crc = deflate_zeros(256 * 2**20)
                entries.append(RawEntry(info.filename.encode(), payload, 8, crc, info.file_size))
            else:
                entries.append(RawEntry(info.filename.encode(), data, 0, zlib.crc32(data), len(data)))
    return write_raw_zip(tmp_path / "lying.pt2", entries)


def _overlap(good: Path, tmp_path: Path) -> Path:
    """Two directory records for one weight's bytes (the overlapping-entries bomb)."""
    with zipfile.ZipFile(good) as z:
        infos = z.infolist()
        entries = [RawEntry(i.filename.encode(), z.read(i), 0, i.CRC, i.file_size) for i in infos]
    listing = [(i, e.name) for i, e in enumerate(entries)] + [(0, b"good/data/weights/weight_99")]
    return write_raw_zip(tmp_path / "overlap.pt2", entries, listing)


def _with(good: Path, tmp_path: Path, **extra: bytes) -> Path:
    return write(tmp_path / "extra.pt2", {**members(good), **{k.replace("__", "/"): v for k, v in extra.items()}})


def _two_folders(good: Path, tmp_path: Path) -> Path:
    path = write(tmp_path / "two.pt2", members(good))
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("other/models/model.json", b"{}")
    return path


FILES = {
    "garbage": (lambda g, t: (t / "g.pt2").write_bytes(os.urandom(4096)) and t / "g.pt2", "not a torch.export"),
    "truncated": (lambda g, t: (t / "t.pt2").write_bytes(g.read_bytes()[:5000]) and t / "t.pt2", "not a readable zip"),
    "torchscript": (lambda g, t: _torchscript(t), "TorchScript"),
    "torch.save zip": (lambda g, t: _torch_save(t), "TorchScript or torch.save"),
    "lying size": (_lying_weight, "damaged|declares"),  # zipfile stops at the declared size: CRC
    "overlapping entries": (_overlap, "overlap"),
    "aotinductor": (lambda g, t: _with(g, t, data__aotinductor__model__m_so=b"\x7fELF"), "native code"),
    "two programs": (lambda g, t: _with(g, t, models__other_json=b"{}"), "one exported program"),
    "unknown member": (lambda g, t: _with(g, t, data__weights__evil_pkl=b"\x80\x02."), "does not write"),
    "two folders": (lambda g, t: _two_folders(g, t), "one folder"),
}


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("name", list(FILES))
def test_not_a_plain_export_archive_is_refused(good, tmp_path, name):
    make, match = FILES[name]
    path = make(good, tmp_path)
    with pytest.raises(ModelLoadError, match=match):
        sandbox.read_spec(path)
    with pytest.raises(ModelLoadError, match=match):
        pt2file.read_state_dict(path)


def test_a_program_json_over_max_pickle_bytes_is_refused(good, tmp_path, set_limits):
    parts = members(good)
    path = write(tmp_path / "big.pt2", {**parts, MODEL_JSON: parts[MODEL_JSON] + b" " * 2**20})
    set_limits(max_pickle_bytes=2**20)
    with pytest.raises(ModelLoadError, match="max_pickle_bytes"):
        sandbox.read_spec(path)


def test_weights_over_max_tensor_elements_are_refused(good, tmp_path, set_limits):
    set_limits(max_tensor_elements=10_000)
    with pytest.raises(ModelLoadError, match="max_tensor_elements"):
        sandbox.read_spec(good)


def test_a_weight_that_reaches_past_its_bytes_is_refused(good, tmp_path):
    def change(cfg):
        cfg["config"]["features.0.weight"]["tensor_meta"]["storage_offset"] = {"as_int": 10**6}

    path = write(tmp_path / "oob.pt2", edit_json(members(good), WEIGHTS, change))
    with pytest.raises(ModelLoadError, match="reach past"):
        sandbox.read_spec(path)
