"""torch.export archives (.pt2): read without running anything from the file, lifted into layers.

`torch.export.load` is not safe on an uploaded file (torch 2.14, `torch/export/pt2_archive/
_package.py` and `torch/_export/serde/serialize.py`): weights and tensor constants marked
`use_pickle` go through `torch.load(weights_only=False)`, custom-object constants through
`torch._C._pickle_load_obj` and `pickle.loads`, the sample inputs through `torch.load(
weights_only=True)` that falls back to `weights_only=False`; and the program JSON itself holds
code: `guards_code` strings are `exec`'d by `ExportedProgram.module()`, every symbolic size
(`expr_str`) goes through `sympy.sympify` (Python `eval`), and an operator name is resolved by
`getattr` from `torch`, `math` or `operator` (`torch.serialization.os.system` reaches
`os.system`), as are the names in node metadata, and the input/output treespecs can name a
module for torch to import. So kdcore never calls `torch.export.load`:

1. The zip is opened through `kdcore.archive` (entries, names, methods, overlap, real sizes; the
   file at most `max_model_file_bytes`). It must hold one program: every member in one folder,
   only the members torch.export.save writes (`models/model.json`, the weights and constants
   named by their configs, `data/sample_inputs/model.pt`, the version files, `extra/`). A
   TorchScript or torch.save zip, the old pre-2.7 layout and AOTInductor packages (compiled
   native code) are refused by name.
2. Weights and tensor constants are read by kdcore from their raw bytes (dtype, sizes, strides
   from the config, checked against the bytes and `max_tensor_elements`). One marked
   `use_pickle` must pass `torch_load_weights_only` (pickle_scan, then the weights-only
   unpickler) and be a plain dense tensor. Custom-object constants (TorchBind, opaque objects)
   are refused: only torch's full unpickler builds them.
3. The sample inputs are never needed (the input shape is in the graph) but are checked the same
   way, so a file that carries a pickle payload anywhere is refused, not silently accepted.
4. The program JSON (at most `max_pickle_bytes`) is made plain data by
   `kdcore.models.pt2program.check_program`: operators from an allow-list of aten ops, arguments
   of plain kinds, every `expr_str` in a small sympy grammar, plain inputs and outputs and
   treespecs of tuples, lists and dicts;
   `guards_code` is dropped and node metadata kept only for `nn_module_stack`.
5. Only then torch's deserializer (`ExportedProgramDeserializer`) builds the program from that
   JSON and kdcore's tensors, with no sample inputs: torch unpickles nothing. `.module()` is
   lifted into real layers (`kdcore.models.fxlift`) and run on a batch of 2: the exported input
   guards are gone, so a graph exported with a fixed batch size of 1 is accepted when it runs on
   other sizes (most do: `flatten` stays symbolic), and refused with `EXPORT_HINT` when not.

Anything wrong is a ModelLoadError naming the member and why.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tempfile
from pathlib import Path

import torch
from torch import nn

from kdcore import limits
from kdcore.archive import SafeZip, open_zip
from kdcore.errors import ConfigError, InputError, ModelLoadError
from kdcore.models.fxlift import LiftedGraph, lift
from kdcore.models.pt2program import as_int, check_program, io_shapes, short
from kdcore.models.reinit import fresh
from kdcore.models.sources import source_path, with_source
from kdcore.models.spec import ModelSpec
from kdcore.models.torchfile import WHOLE_MODEL_HINT, torch_load_weights_only

EXPORT_HINT = (
    "Export with a free batch size: `torch.export.save(torch.export.export(model.eval(), (torch.zeros(2, C, H, W),), "
    "dynamic_shapes=({0: torch.export.Dim('batch')},)), 'model.pt2')`"
)
_FQN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_DTYPES = {1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16}
_DTYPES |= {7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16}
_STRIDED = 7  # torch._export.serde.schema.Layout.Strided
_FIXED = {"archive_format": b"pt2", "archive_version": b"0", "byteorder": b"little"}
_OTHER = ("models/model.json", ".data/version", ".data/serialization_id", "data/sample_inputs/model.pt")
_WEIGHTS, _CONSTANTS = "data/weights/model_weights_config.json", "data/constants/model_constants_config.json"


def read_spec(path: Path) -> ModelSpec:
    """arch `pt2`: input (C, H, W) and classes from the graph, the file itself as the source."""
    _, shape, classes = _load(Path(path))
    try:
        spec = ModelSpec(arch="pt2", num_classes=classes, input_shape=shape)
    except ConfigError as e:
        raise ModelLoadError(f"{Path(path).name} holds a graph kdcore cannot audit: {e}") from e
    return with_source(spec, path)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The lifted graph's state_dict: the archive's weights under their exported names."""
    model, _, _ = _load(Path(path))
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def build(spec: ModelSpec) -> nn.Module:
    """A fresh student of the spec's graph: its source archive re-read (the same checks), lifted,
    every parameter re-initialised (`kdcore.models.reinit`)."""
    model, _, _ = _load(source_path(spec))
    return fresh(model, spec.extra)


def load_graph(path: Path) -> LiftedGraph:
    """The archive's model with its own weights, lifted, in eval mode (steps 1-5 above)."""
    return _load(Path(path))[0]


_last: tuple[tuple, tuple[LiftedGraph, tuple[int, int, int], int]] | None = None


def _load(path: Path) -> tuple[LiftedGraph, tuple[int, int, int], int]:
    """Steps 1-5, for a copy of the model: the last file read is kept (by its identity on disk and
    the limits in force), since loading a model reads it three times (weights, spec,
    architecture) and torch's deserializer takes seconds."""
    global _last
    try:
        st = path.stat()
    except OSError as e:
        raise ModelLoadError(f"Model file {path} cannot be read ({e})") from e
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, limits.current())
    if _last is None or _last[0] != key:
        _last = None
        _last = (key, _load_uncached(path))
    model, shape, classes = _last[1]
    return copy.deepcopy(model), shape, classes


def _load_uncached(path: Path) -> tuple[LiftedGraph, tuple[int, int, int], int]:
    program, state, constants = _read_archive(path)
    shape, classes = io_shapes(program, path)
    from torch._export.serde import schema  # torch's private serde, only for .pt2 files
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    try:
        ep = ExportedProgramDeserializer().deserialize(
            _dict_to_dataclass(schema.ExportedProgram, program), state, constants, None
        )
        model = lift(ep.module())
    except Exception as e:  # torch's deserializer on checked JSON: any failure is the file's
        raise ModelLoadError(f"{path.name} is not a valid torch.export program ({short(e)})") from e
    try:
        with torch.inference_mode():
            out = model(torch.zeros(2, *shape))
    except Exception as e:  # a graph that cannot run on a batch of 2
        raise ModelLoadError(
            f"{path.name} does not run on a batch of 2 images ({short(e)}); it was probably exported with a "
            f"fixed batch size. {EXPORT_HINT}"
        ) from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(f"{path.name} should return logits (B, {classes}); it returned {got}")
    return model, shape, classes


def _read_archive(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Steps 1-4: the checked program JSON, its weights and its tensor constants."""
    lim = limits.current()
    if not path.is_file():
        raise ModelLoadError(f"Model file {path} does not exist (or is not a file)")
    if path.stat().st_size > lim.max_model_file_bytes:
        raise ModelLoadError(f"{path.name} is larger than {lim.max_model_file_bytes:,} bytes (max_model_file_bytes)")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise ModelLoadError(f"{path.name} is not a torch.export archive (torch.export.save writes a zip)")
    try:
        with open_zip(path, label=path.name) as z:
            members = _layout(z, path)
            program = _json(z, members["models/model.json"], lim)
            check_program(program, path)
            reader = _Tensors(z, members, path, lim)
            state = reader.read("data/weights/", _config(z, members, _WEIGHTS, lim), constants=False)
            constants = reader.read("data/constants/", _config(z, members, _CONSTANTS, lim), constants=True)
            unknown = sorted(set(members) - reader.seen - {*_FIXED, *_OTHER, _WEIGHTS, _CONSTANTS})
            unknown = [n for n in unknown if not n.startswith("extra/")]
            if unknown:
                raise ModelLoadError(f"{path.name} holds members torch.export.save does not write: {unknown[:5]}")
            if "data/sample_inputs/model.pt" in members:
                _check_pickle(z, members["data/sample_inputs/model.pt"], path, lim)
    except InputError as e:
        raise ModelLoadError(f"{path.name} was refused: {e}") from e
    return program, state, constants


def _layout(z: SafeZip, path: Path) -> dict:
    """Members by their name inside the archive's one folder; refuses what is not torch.export's."""
    names = [m.name for m in z.members if not m.is_dir]
    folders = {n.split("/", 1)[0] for n in names}
    if len(folders) != 1 or any("/" not in n for n in names):
        raise ModelLoadError(f"{path.name} is not a torch.export archive (its members are not in one folder)")
    members = {m.name.split("/", 1)[1]: m for m in z.members if not m.is_dir}
    if "data.pkl" in members or "constants.pkl" in members or any(n.startswith("code/") for n in members):
        raise ModelLoadError(
            f"{path.name} is a TorchScript or torch.save archive, not a torch.export one; it was not loaded "
            f"(TorchScript runs code when loaded). {WHOLE_MODEL_HINT}"
        )
    if "serialized_exported_program.json" in members or "version" in members:
        raise ModelLoadError(f"{path.name} is a torch.export archive of the pre-2.7 format; re-save it. {EXPORT_HINT}")
    if any(n.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")) for n in members):
        raise ModelLoadError(f"{path.name} holds compiled native code (AOTInductor); only exported programs are read")
    models = [n for n in members if n.startswith("models/")]
    if models != ["models/model.json"]:
        raise ModelLoadError(f"{path.name} must hold one exported program (models/model.json); it holds {models[:5]}")
    for name, value in _FIXED.items():
        got = _read(z, members[name], 64, "64 bytes") if name in members else b""
        if got.strip() != value:
            raise ModelLoadError(f"{path.name}: {name} is {got[:20]!r}, expected {value!r} (torch.export.save)")
    return members


def _read(z: SafeZip, member, cap: int, cap_name: str) -> bytes:
    """The member's bytes: at most `cap`, and reading stops one byte past its declared size (a
    member that inflates to more than it declares is refused without holding the rest)."""
    return z.read(member, min(member.declared_size, cap), cap_name)


def _json(z: SafeZip, member, lim: limits.Limits) -> dict:
    data = _read(z, member, lim.max_pickle_bytes, "max_pickle_bytes")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ModelLoadError(f"{member.name!r} in {z.label} is not valid JSON ({short(e)})") from e
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{member.name!r} in {z.label} is not a JSON object")
    return obj


def _config(z: SafeZip, members: dict, name: str, lim: limits.Limits) -> dict:
    if name not in members:
        raise ModelLoadError(f"{z.label} has no {name} (torch.export.save writes it)")
    config = _json(z, members[name], lim).get("config")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{name} in {z.label} has no 'config' object")
    return config


class _Bad(Exception):
    """A tensor record that is refused; `_Tensors.read` names the record."""


class _Tensors:
    """Tensors of a payload config, read from raw bytes (aliases share storage, as in torch)."""

    def __init__(self, z: SafeZip, members: dict, path: Path, lim: limits.Limits):
        self.z, self.members, self.path, self.lim = z, members, path, lim
        self.elements = 0
        self.seen: set[str] = set()
        self.storages: dict[str, torch.Tensor] = {}

    def read(self, folder: str, config: dict, constants: bool) -> dict[str, torch.Tensor]:
        out = {}
        for fqn, meta in config.items():
            where = f"{folder}{meta.get('path_name') if isinstance(meta, dict) else '?'} ({fqn!r})"
            try:
                file = meta["path_name"]
                if not (_FQN.fullmatch(fqn) and isinstance(file, str) and _FILE.fullmatch(file)):
                    raise _Bad("named in a form torch.export.save does not write")
                if constants and not file.startswith("tensor_"):
                    raise _Bad("a custom object (TorchBind or opaque), which only torch's full unpickler builds")
                member = self.members.get(folder + file)
                if member is None:
                    raise _Bad("missing from the archive")
                self.seen.add(folder + file)
                t = self.pickled(member) if meta["use_pickle"] is True else self.raw(member, meta["tensor_meta"])
                if meta.get("is_param") and t.is_floating_point():
                    t = nn.Parameter(t, requires_grad=bool(meta["tensor_meta"]["requires_grad"]))
            except _Bad as e:
                raise ModelLoadError(f"{self.path.name}: {where} is refused: it is {e}") from None
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise ModelLoadError(f"{self.path.name}: {where} is not a valid tensor record ({short(e)})") from e
            out[fqn] = t
        return out

    def raw(self, member, meta: dict) -> torch.Tensor:
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None or meta.get("layout", _STRIDED) != _STRIDED:
            raise _Bad(f"of dtype {meta['dtype']} / layout {meta.get('layout')}, not a plain dense tensor")
        try:
            sizes = [as_int(s) for s in meta["sizes"]]
            strides = [as_int(s) for s in meta["strides"]]
            offset = as_int(meta["storage_offset"])
        except ModelLoadError as e:
            raise _Bad(f"of symbolic sizes ({e})") from None
        if len(sizes) != len(strides) or min((*sizes, *strides, offset), default=0) < 0:
            raise _Bad(f"of sizes {sizes} / strides {strides} / offset {offset}, which are not valid")
        self.elements += math.prod(sizes)
        if self.elements > self.lim.max_tensor_elements:
            raise _Bad(
                f"over the budget: all tensors exceed {self.lim.max_tensor_elements:,} elements (max_tensor_elements)"
            )
        if member.name not in self.storages:
            data = _read(self.z, member, self.lim.max_model_file_bytes, "max_model_file_bytes")
            size = torch.empty(0, dtype=dtype).element_size()
            if len(data) % size:
                raise _Bad(f"{len(data)} bytes, not a whole number of {dtype} elements")
            self.storages[member.name] = (
                torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
            )
        flat = self.storages[member.name]
        if flat.dtype != dtype:
            raise _Bad("read by two records as different dtypes")
        end = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True)) if all(sizes) else -1
        if end >= flat.numel():
            raise _Bad(
                f"declared with sizes {sizes} and strides {strides} that reach past its {flat.numel():,} elements"
            )
        return flat.as_strided(sizes, strides, offset)

    def pickled(self, member) -> torch.Tensor:
        t = _check_pickle(self.z, member, self.path, self.lim)
        if type(t) not in (torch.Tensor, nn.Parameter) or t.layout != torch.strided or t.is_quantized:
            raise _Bad(f"a pickled {type(t).__name__}, not a plain dense tensor")
        return t.detach()


def _check_pickle(z: SafeZip, member, path: Path, lim: limits.Limits) -> object:
    """A torch.save member through `torch_load_weights_only` (pickle_scan, weights-only unpickler)."""
    data = _read(z, member, lim.max_model_file_bytes, "max_model_file_bytes")
    with tempfile.TemporaryDirectory(prefix="kdcore-pt2-") as tmp:
        file = Path(tmp) / "member.pt"
        file.write_bytes(data)
        try:
            return torch_load_weights_only(file, lim)
        except ModelLoadError as e:  # "member.pt is a pickled object (it references `posix.system`)...."
            reason = str(e).split(". ")[0].replace("member.pt ", "", 1)
            raise ModelLoadError(
                f"{path.name}: {member.name!r} {reason}; pickles can run code, so the archive was not loaded"
            ) from e
