"""Saving and SAFE loading of classifier weights.

Users upload models they did not train, so a model file is untrusted input. The policy, each
guard with the limit it uses (`kdcore.limits.current()`):

1. `.safetensors` is the preferred format. It is a JSON header plus raw tensor bytes; reading it
   cannot run code. kdcore writes only this format (`save_model`), with the `ModelSpec` in the
   header metadata (key `kdcore_spec`) and again in a `<stem>.json` beside the file. Its tensors'
   elements are summed from the header before any is read (`max_tensor_elements`).
2. PyTorch pickles (`.pt`, `.pth`, `.bin`, `.ckpt`) are read with
   `torch.load(..., weights_only=True)` only, never `weights_only=False`. A pickle can name any
   Python callable (`os.system`, ...) and have the unpickler call it, so full unpickling of an
   uploaded file is arbitrary code execution on the auditing machine. The weights-only unpickler
   allows tensors and plain containers and refuses every other global; a file it refuses (a whole
   pickled `nn.Module`, a malicious payload) is reported, not retried in a looser mode.
3. TorchScript archives (`torch.jit.save` output: a zip with `constants.pkl` and a `code/`
   folder) are refused before `torch.load` sees them: they carry TorchScript code that runs
   when the model is loaded and called.
4. What the weights-only unpickler still builds without bound is checked before it runs:
   - the file itself: at most `max_model_file_bytes`; what it looks like is recognised first
     (torch.save zip, pickle, or else text, an image, HDF5, ONNX, tar: refused by name);
   - a torch.save zip goes through `kdcore.archive` (entries, names, methods, overlap, sizes);
     its `data.pkl` is decompressed with its real bytes counted (`max_pickle_bytes`), and any
     compressed tensor record is decompressed once to check its real size (`max_archive_bytes`);
   - the pickle stream (data.pkl, or the pickles of the pre-2018 format, read up to
     `max_pickle_bytes`) is walked by `kdcore.models.pickle_scan`: nesting (`max_nesting`),
     instruction count and shared-reference expansion (`max_pickle_bytes / 16`), and the
     elements of storages, `bytearray(n)` and tensor constructors (`max_tensor_elements`).
5. Only dense CPU tensors count as weights (not sparse, quantized, meta or nested ones), and
   `load_model` refuses weights that cannot give a sound audit: a non-float tensor where the
   architecture has a float one (bool, int, complex), and NaN or Inf values.
6. torch.export archives (`.pt2`) are read by `kdcore.models.pt2file`, never by
   `torch.export.load`, which (torch 2.14) unpickles weights and tensor constants marked
   `use_pickle` with `torch.load(weights_only=False)`, custom-object constants with `pickle.loads`
   / `torch._C._pickle_load_obj`, and the sample inputs with `weights_only=True` falling back to
   `weights_only=False`; and whose program JSON is code: `.module()` `exec`s `guards_code`,
   symbolic sizes go through `sympy.sympify` (eval), operator names are resolved by `getattr`
   from `torch` (`torch.serialization.os.system`). kdcore reads the tensors from their raw bytes
   (a pickled one, and the sample inputs, must pass item 4 and the weights-only unpickler),
   refuses custom objects, makes the JSON plain data (allow-listed aten ops, a small sympy
   grammar, guards dropped), and only then calls torch's deserializer, which unpickles nothing.
   So `.pt2` needs no trust switch. ONNX (`.onnx`) is data too: a protobuf graph of standard
   operators, converted without running code from the file (`kdcore.models.onnxfile`).

Every refusal is a `ModelLoadError` that says what was found and what to upload instead:
`safetensors.torch.save_file(model.state_dict(), "model.safetensors")`, or at least
`torch.save(model.state_dict(), "model.pt")`. No message passes on torch's own advice to
retry in the unsafe mode.

`load_model` then rebuilds the architecture from the spec, checks keys and shapes against the
file (one error listing every problem), loads strictly and runs a dummy forward pass. `read_spec`
raises ModelLoadError for any malformed file or spec, and nothing else.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from kdcore import limits
from kdcore.errors import ConfigError, ModelLoadError
from kdcore.io import atomic_write_bytes, atomic_write_json
from kdcore.models.fit import check_fits, check_sound, listing
from kdcore.models.registry import FILE_ARCHS, build_model, check_forward
from kdcore.models.sources import copy_beside, resolved, with_source
from kdcore.models.spec import ModelSpec
from kdcore.models.torchfile import UPLOAD_HINT, torch_load_weights_only

SPEC_METADATA_KEY = "kdcore_spec"
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUPPORTED_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES, ".onnx", ".pt2", ".zip")
NESTED_STATE_DICT_KEYS = ("state_dict", "model_state_dict")  # common training-checkpoint layouts

_UPLOAD_HINT = UPLOAD_HINT

PathLike = str | os.PathLike


def save_model(model: nn.Module, spec: ModelSpec, path: PathLike) -> Path:
    """Write `model`'s weights to `path` (.safetensors) and its spec to `<stem>.json` beside it.

    Both files are written atomically. Tensors are copied to the CPU as contiguous, unshared
    tensors, so tied weights (one storage under two keys) and views are saved as plain copies.
    Returns the path of the .safetensors file.
    """
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ConfigError(f"Models are saved as {SAFETENSORS_SUFFIX}; got the file name '{path.name}'")
    # clone() gives every key its own storage: safetensors refuses shared or strided tensors.
    tensors = {
        k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()
    }
    spec = copy_beside(spec, path)  # a graph or class file travels with the weights
    data = safetensors.torch.save(tensors, metadata={"format": "pt", SPEC_METADATA_KEY: spec.to_json()})
    atomic_write_bytes(path, data)
    atomic_write_json(path.with_suffix(".json"), spec.to_dict())
    return path


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The tensors in a model file, read without running any code from the file.

    `.safetensors` is read directly; `.pt/.pth/.bin/.ckpt` with `torch.load(weights_only=True)`;
    `.onnx`, `.pt2` and Hugging Face-style folders or zips by their readers (`GRAPH_FORMATS`).
    A checkpoint dict holding a `state_dict` or `model_state_dict` is unwrapped, and a `module.`
    prefix on every key (from `nn.DataParallel`) is removed. Raises ModelLoadError.
    """
    path = _existing(path)
    fmt = _graph_format(path)
    if fmt is not None:
        return fmt.read_state_dict(path)
    lim = limits.current()
    _check_size(path, lim)
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        obj = _read_safetensors(path, lim.max_tensor_elements)
    elif suffix in PICKLE_SUFFIXES:
        obj = torch_load_weights_only(path, lim)
    else:
        raise ModelLoadError(
            f"Unsupported model file type '{path.suffix or path.name}'; expected one of "
            f"{', '.join(SUPPORTED_SUFFIXES)} or a Hugging Face-style model folder"
        )
    return _plain_state_dict(obj, path)


def read_spec(path: PathLike, input_shape: tuple[int, int, int] | None = None) -> ModelSpec | None:
    """The spec stored with a model file, or None if there is none.

    `.onnx`, `.pt2` and Hugging Face-style folders or zips carry their own (read from the graph
    or `config.json`); `input_shape` (C, H, W) is passed to those whose reader takes it (a graph
    with a symbolic height and width needs it) and ignored otherwise. Otherwise: the safetensors
    metadata (key `kdcore_spec`) first, then a `<stem>.json` beside the file — but only one that is
    a kdcore spec (a JSON object with `arch` and `num_classes`): any other JSON of that name is not
    ours and is ignored. A kdcore spec that is present but invalid raises ModelLoadError.
    """
    path = _existing(path)
    fmt = _graph_format(path)
    if fmt is not None:
        takes_shape = input_shape is not None and "input_shape" in inspect.signature(fmt.read_spec).parameters
        return fmt.read_spec(path, input_shape=input_shape) if takes_shape else fmt.read_spec(path)
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        try:
            with safetensors.safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
        except Exception as e:  # untrusted file: any parser failure is the file's, see read_state_dict
            raise ModelLoadError(f"{path.name} is not a valid safetensors file ({e}). {_UPLOAD_HINT}") from e
        if SPEC_METADATA_KEY in metadata:
            return resolved(_parse_spec(metadata[SPEC_METADATA_KEY], f"the metadata of {path.name}"), path.parent)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        spec = _sidecar_spec(sidecar)
        return resolved(spec, path.parent) if spec is not None else None
    return None


_SIDECAR_KEYS = ("arch", "num_classes")  # what makes a JSON file a kdcore spec (ModelSpec.from_dict needs them)
_MAX_SIDECAR_BYTES = 2**20


def _sidecar_spec(sidecar: Path) -> ModelSpec | None:
    try:
        if sidecar.stat().st_size > _MAX_SIDECAR_BYTES:
            return None  # a kdcore spec is a few hundred bytes; a big JSON file is something else
        text = sidecar.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # not UTF-8 text: not a spec kdcore wrote
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(obj, dict) and all(k in obj for k in _SIDECAR_KEYS)):
        return None
    return _parse_spec(text, sidecar.name)


def load_model(
    path: PathLike, spec: ModelSpec | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model of `spec` (or the spec stored with the file) and load the file's weights.

    Returns `(model, spec)` with the model in eval mode on `device`.
    Raises ModelLoadError for anything about the file: unreadable or unsafe, no spec, keys or
    shapes that do not fit the architecture, or a failing dummy forward pass (the ConfigError
    of `check_forward` is re-raised as ModelLoadError so callers catch one type). A spec that
    cannot be built at all (unknown architecture) raises ConfigError from `build_model`.
    """
    path = Path(path)
    state = read_state_dict(path)
    if spec is None:
        spec = read_spec(path)
    if spec is None:
        raise ModelLoadError(
            f"{path.name} does not say which architecture it is (no kdcore spec in the file and no "
            f"{path.with_suffix('.json').name} beside it); give --arch and --num-classes"
        )
    spec = resolved(spec, path.parent)
    if spec.arch in FILE_ARCHS and not spec.source and _graph_format(path) is not None:
        spec = with_source(spec, path)  # the file is its own architecture
    try:
        model = build_model(spec)
    except ConfigError as e:
        if spec.arch in FILE_ARCHS:  # the graph came from the file: a failure to build it is the file's
            raise ModelLoadError(str(e)) from e
        raise
    check_fits(model.state_dict(), state, spec, path)
    check_sound(model.state_dict(), state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied; keys and shapes were checked
        raise ModelLoadError(f"The weights in {path.name} cannot be loaded into {spec.arch}: {e}") from e
    try:
        check_forward(model, spec)
    except ConfigError as e:
        raise ModelLoadError(f"{path.name} loaded into {spec.arch}, but {e}") from e
    model.eval()
    return model.to(device), spec


GRAPH_FORMATS = {".onnx": "kdcore.models.onnxfile", ".pt2": "kdcore.models.pt2file", ".zip": "kdcore.models.timmhf"}
FOLDER_FORMAT = "kdcore.models.timmhf"  # a Hugging Face-style model folder (config.json + model.safetensors)


def _graph_format(path: Path):
    """The reader module of a format that carries its own spec (ONNX, torch.export, HF), or None.
    Each has `read_spec(path) -> ModelSpec | None` and `read_state_dict(path) -> dict`."""
    name = FOLDER_FORMAT if path.is_dir() else GRAPH_FORMATS.get(path.suffix.lower())
    return importlib.import_module(name) if name else None


def _check_size(path: Path, lim: limits.Limits) -> None:
    size = path.stat().st_size
    if size > lim.max_model_file_bytes:
        raise ModelLoadError(
            f"{path.name} is {size / 2**30:.1f} GiB; model files over {lim.max_model_file_bytes / 2**30:.1f} GiB "
            "are refused (max_model_file_bytes)"
        )


def _existing(path: PathLike) -> Path:
    """A model file, or a model folder (Hugging Face style)."""
    path = Path(path)
    return path if path.is_dir() else _existing_file(path)


def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Model file {path} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"Model file {path} is empty; upload the file again")
    return path


def _read_safetensors(path: Path, max_elements: int) -> dict[str, torch.Tensor]:
    try:
        with safetensors.safe_open(path, framework="pt") as f:  # reads the header only
            elements = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        if elements > max_elements:
            raise ModelLoadError(
                f"{path.name} declares {elements:,} tensor elements; at most {max_elements:,} are read "
                "(max_tensor_elements)"
            )
        return safetensors.torch.load_file(path, device="cpu")
    except ModelLoadError:
        raise
    except Exception as e:  # any parser failure is a property of the (untrusted) file
        raise ModelLoadError(f"{path.name} is not a valid safetensors file ({e}). {_UPLOAD_HINT}") from e


def _plain_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in NESTED_STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ModelLoadError(
            f"{path.name} holds a {type(obj).__name__}, expected a state_dict (a dict of tensors). {_UPLOAD_HINT}"
        )
    bad = [
        f"{k!r} ({type(v).__name__})"
        for k, v in obj.items()
        if not (isinstance(k, str) and isinstance(v, torch.Tensor))
    ]
    if bad:
        raise ModelLoadError(
            f"{path.name} is not a plain state_dict: these entries are not named tensors: "
            f"{listing(bad)}. {_UPLOAD_HINT}"
        )
    exotic = [f"{k} ({_kind(v)})" for k, v in obj.items() if _kind(v) != "dense"]
    if exotic:
        raise ModelLoadError(
            f"{path.name} holds tensors that are not plain dense weights: {listing(exotic)}. A classifier's "
            f"state_dict holds dense CPU tensors. {_UPLOAD_HINT}"
        )
    if not obj:
        raise ModelLoadError(f"{path.name} holds no tensors. {_UPLOAD_HINT}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel / DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _kind(t: torch.Tensor) -> str:
    if t.is_quantized:
        return "quantized"
    if t.is_meta or t.is_nested or t.layout != torch.strided:
        return "meta" if t.is_meta else "nested" if t.is_nested else f"layout {t.layout}"
    return "dense" if t.device.type == "cpu" else f"on {t.device.type}"


def _parse_spec(text: str, where: str) -> ModelSpec:
    try:
        return ModelSpec.from_json(text)
    except ConfigError as e:
        raise ModelLoadError(
            f"The model spec in {where} is not valid ({e}); fix it or give --arch and --num-classes"
        ) from e
