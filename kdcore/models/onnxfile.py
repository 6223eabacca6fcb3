"""ONNX models (`.onnx`): checked, then converted into a trainable PyTorch graph with onnx2torch.

ONNX is what every framework exports to (PyTorch, Keras via tf2onnx, scikit-learn via skl2onnx),
so a vendor's model often arrives as one. The file is a protobuf `ModelProto`: a graph of standard
operators and its weights. Reading it runs no code, but it is untrusted (limits from
`kdcore.limits.current()`):

1. At most `max_model_file_bytes`, read whole and parsed by protobuf; a message that parses but has
   no graph, operator set or IR version is not an ONNX model. `onnx.checker` then checks it.
2. Refused before anything is converted, each with what to do instead:
   - external data: a tensor whose data_location is EXTERNAL names a file *on the auditing machine*
     by path, which onnx and onnxruntime would read; subgraphs are searched too;
   - operators of a custom domain (only the standard '' / 'ai.onnx' ones convert);
   - more than `max_tensor_elements` tensor elements in all (declared dims, summed before any tensor
     is decoded, Identity copies counted), or raw data that does not match its declared shape;
   - more than one graph input (initializers aside), an input that is not float32 (B, C, H, W),
     more than one output; H and W left symbolic when no `input_shape` hint was given.
3. Normalised and converted by `kdcore.models.onnxconvert` into an `fx.GraphModule` of real torch
   layers (nn.Conv2d, nn.Linear, nn.BatchNorm2d, named after the ONNX nodes, e.g.
   `features/features/0/Conv`; the operators kdcore adds to onnx2torch in `kdcore.models.onnxops`),
   an opset newer than onnx2torch converts brought down first; an operator that converts at no
   opset, and a weight left as a constant, are refused there.
4. Fidelity: the converted module and onnxruntime (CPU, one thread) run the same 4 random images
   (own generator: no global random draws), and logits differing by more than
   `ATOL + RTOL · max|logit|` are refused. Why this tolerance: both compute in float32 with
   different kernels and summation orders (~1e-7 relative per op, ~1e-5 through a ResNet-18); a
   wrong conversion (a padding, a transposed weight, a lost epsilon) is off by O(1) relative.

`read_spec` and `read_state_dict` serve `kdcore.models.loading` (GRAPH_FORMATS); `build(spec)` the
registry (`arch="onnx"`: the graph of `spec.source`, re-initialised — a fresh student). A process
keeps its last conversions by the file's SHA-256 (a load reads, specs and builds the same file).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdcore import limits
from kdcore.errors import ConfigError, ModelLoadError
from kdcore.models.onnxconvert import EXPORT_HINT, convert
from kdcore.models.reinit import fresh
from kdcore.models.sources import source_path, with_source
from kdcore.models.spec import ModelSpec
from kdcore.third_party import import_onnxruntime

log = logging.getLogger("kdcore")

ATOL, RTOL = 1e-4, 1e-3  # fidelity tolerance, see the module docstring (4.)
SPEC_METADATA_KEY = "kdcore_spec"  # the same key as in kdcore's safetensors metadata
_STANDARD_DOMAINS = ("", "ai.onnx")
_FIDELITY_BATCH = 4
_CACHED = 2  # conversions kept per process


@dataclass(frozen=True)
class _Graph:
    """A checked, converted ONNX file."""

    name: str
    sha256: str
    proto: object  # onnx.ModelProto, normalised, at the opset it was converted at
    module: nn.Module  # onnx2torch's fx.GraphModule (eval mode; copied before anyone changes it)
    dims: tuple[int | None, int | None, int | None]  # the input's (C, H, W); None = symbolic
    batch: int | None  # the batch size the file fixes, if any (made symbolic for the conversion)


_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple[str, limits.Limits], _Graph] = OrderedDict()
_VERIFIED: dict[tuple[str, tuple[int, int, int]], int] = {}  # (sha256, input shape) → classes


def read_spec(path: Path, input_shape: tuple[int, int, int] | None = None) -> ModelSpec:
    """The spec of an ONNX file: arch "onnx", classes and input shape from the graph (or the
    `input_shape` hint where H/W are symbolic), mean/std/class names/layers from a kdcore spec in
    its metadata_props (key `kdcore_spec`) or (0, 1); the file as its source. ModelLoadError."""
    g = _converted(Path(path))
    shape = _input_shape(g, input_shape)
    classes = _verified(g, shape)
    stored = _metadata_spec(g)
    try:
        spec = ModelSpec(
            arch="onnx",
            num_classes=classes,
            input_shape=shape,
            mean=stored.mean if stored else (0.0,),
            std=stored.std if stored else (1.0,),
            class_names=stored.class_names if stored and len(stored.class_names) == classes else (),
            layers=stored.layers if stored else {},
        )
    except ConfigError as e:
        raise ModelLoadError(f"{g.name} cannot be audited as it is: {e}") from e
    return with_source(spec, path)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The converted graph's state_dict (its layers' weights and the graph's constants), after the
    fidelity check where the graph fixes its input size. ModelLoadError."""
    g = _converted(Path(path))
    if None not in g.dims:
        _verified(g, g.dims)
    return {k: v.detach().clone() for k, v in g.module.state_dict().items()}


def build(spec: ModelSpec) -> nn.Module:
    """A fresh student of the graph in `spec.source`: converted again, every parameter re-initialised."""
    return fresh(copy.deepcopy(_converted(source_path(spec)).module), spec.extra)


# ── reading and checking ────────────────────────────────────────────────────────────────────────


def _converted(path: Path) -> _Graph:
    lim = limits.current()
    size = path.stat().st_size
    if size > lim.max_model_file_bytes:
        raise ModelLoadError(
            f"{path.name} is {size / 2**30:.1f} GiB; model files over {lim.max_model_file_bytes / 2**30:.1f} GiB "
            "are refused (max_model_file_bytes)"
        )
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    key = (sha, lim)  # checked under these limits
    with _LOCK:  # the dashboard builds from several threads
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    proto = _parse(data, path.name)
    batch, *dims = _check(proto, path.name, lim)
    del data
    proto, module = convert(proto, path.name)
    g = _Graph(path.name, sha, proto, module.eval(), tuple(dims), batch)
    with _LOCK:
        _CACHE[key] = g
        while len(_CACHE) > _CACHED:
            _CACHE.popitem(last=False)
    return g


def _parse(data: bytes, name: str):
    import onnx  # heavy: onnx, only for .onnx files

    try:
        proto = onnx.ModelProto.FromString(data)  # never follows external data (onnx.load would)
    except Exception as e:  # any protobuf failure is the untrusted file's
        raise ModelLoadError(f"{name} is not a valid ONNX file (its protobuf does not parse: {str(e)[:200]})") from e
    if not (proto.ir_version and proto.opset_import and proto.graph.node and proto.graph.output):
        raise ModelLoadError(f"{name} is not an ONNX model (it has no graph, operator set or IR version)")
    return proto


def _check(proto, name: str, lim: limits.Limits) -> tuple[int | None, ...]:
    """Step 2 of the module docstring; returns the input's (B, C, H, W), None where symbolic."""
    import onnx  # heavy: onnx, only for .onnx files

    elements, consts = 0, {t.name: t for t in proto.graph.initializer}
    for tensor, where in _tensors(proto, lim.max_nesting, name):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise ModelLoadError(
                f"{name} keeps the tensor {tensor.name or where!r} in an external file, named by its path on this "
                "machine; such references are refused. Save the model as one file: torch.onnx.export(..., "
                "external_data=False), or onnx.save(onnx.load('model.onnx'), 'one.onnx', save_as_external_data=False)"
            )
        if any(d < 0 for d in tensor.dims):
            raise ModelLoadError(f"{name}: the tensor {tensor.name or where!r} declares a negative size {tensor.dims}")
        elements += math.prod(tensor.dims)
        if elements > lim.max_tensor_elements:
            break
        if not _data_fits(tensor):
            raise ModelLoadError(
                f"{name}: the tensor {tensor.name or where!r} declares shape {list(tensor.dims)} but its data does "
                f"not have that size; the file is damaged or crafted. {EXPORT_HINT}"
            )
    for node in proto.graph.node:  # each Identity of a weight becomes a copy (step 3)
        if node.op_type == "Identity" and node.input and node.input[0] in consts:
            elements += math.prod(consts[node.input[0]].dims)
    if elements > lim.max_tensor_elements:
        raise ModelLoadError(
            f"{name} declares at least {elements:,} tensor elements; at most {lim.max_tensor_elements:,} are read "
            "(max_tensor_elements)"
        )
    custom = sorted({f"{n.domain}.{n.op_type}" for n in _nodes(proto) if n.domain not in _STANDARD_DOMAINS})
    if custom:
        raise ModelLoadError(
            f"{name} uses operators outside the ONNX standard ({', '.join(custom[:5])}), which cannot be converted; "
            "export it again with standard operators only"
        )
    if proto.graph.sparse_initializer:
        raise ModelLoadError(f"{name} has sparse weights, which cannot be converted; save them as dense tensors")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # the checker's ValidationError and friends: the file's fault
        raise ModelLoadError(f"{name} is not a valid ONNX model (onnx.checker: {str(e).strip()[:300]})") from e
    return _io_dims(proto, name)


def _data_fits(tensor) -> bool:
    """Raw bytes that match the declared shape exactly, or typed values where the shape wants some."""
    import onnx  # heavy: onnx, only for .onnx files

    n = math.prod(tensor.dims)
    if tensor.raw_data:
        try:
            item = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            return False  # an undefined data type
        return len(tensor.raw_data) == n * item or tensor.data_type == onnx.TensorProto.STRING
    try:
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
    except (KeyError, TypeError, ValueError):
        return n == 0
    return n == 0 or len(getattr(tensor, field)) > 0  # exact counts are the checker's (packed types vary)


def _tensors(proto, max_depth: int, name: str):
    """(TensorProto, where) of every initializer and attribute tensor, subgraphs included."""
    todo = [(proto.graph, 1)]
    while todo:
        graph, depth = todo.pop()
        if depth > max_depth:
            raise ModelLoadError(f"{name} nests subgraphs more than {max_depth} deep (max_nesting)")
        yield from ((t, "initializer") for t in graph.initializer)
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t, f"{node.op_type} {node.name}"
                yield from ((t, f"{node.op_type} {node.name}") for t in a.tensors)
                if a.HasField("g"):
                    todo.append((a.g, depth + 1))
                todo.extend((g, depth + 1) for g in a.graphs)


def _nodes(proto):
    todo = [proto.graph]
    while todo:  # depth already bounded by _tensors
        graph = todo.pop()
        for node in graph.node:
            yield node
            for a in node.attribute:
                todo.extend([a.g] if a.HasField("g") else [])
                todo.extend(a.graphs)


def _io_dims(proto, name: str) -> tuple[int | None, ...]:
    import onnx  # heavy: onnx, only for .onnx files

    weights = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{name} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an image classifier "
            "takes one, the images (B, C, H, W)"
        )
    if len(proto.graph.output) != 1:
        raise ModelLoadError(
            f"{name} has {len(proto.graph.output)} outputs; kdcore needs one, the logits (B, classes): "
            "export only those"
        )
    tt = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
    if tt.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
        got = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "untyped"
        raise ModelLoadError(
            f"{name} takes {got} input of rank {len(dims)}; kdcore feeds float32 images (B, C, H, W): {EXPORT_HINT}"
        )
    out = proto.graph.output[0].type.tensor_type.shape.dim
    if len(out) not in (0, 2):
        raise ModelLoadError(f"{name} outputs a tensor of rank {len(out)}; kdcore needs logits (B, classes)")
    return tuple(dims)


def _input_shape(g: _Graph, hint: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if hint is not None:
        hint = tuple(int(v) for v in hint)
        fixed = [(i, d, h) for i, (d, h) in enumerate(zip(g.dims, hint, strict=True)) if d is not None and d != h]
        if fixed:
            raise ModelLoadError(
                f"{g.name} takes input (C, H, W) = {_show(g.dims)}, but the input shape given is {hint}; "
                "give the graph's own shape or none"
            )
        return hint
    if None in g.dims:
        raise ModelLoadError(
            f"{g.name} takes images of input shape {_show(g.dims)} (symbolic sizes); give the input shape (C,H,W) "
            "it was trained on (CLI: --input-shape C,H,W)"
        )
    return g.dims


def _show(dims: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _metadata_spec(g: _Graph) -> ModelSpec | None:
    text = next((p.value for p in g.proto.metadata_props if p.key == SPEC_METADATA_KEY), None)
    if text is None:
        return None
    try:
        return ModelSpec.from_json(text)
    except ConfigError as e:
        raise ModelLoadError(
            f"The model spec in the metadata of {g.name} is not valid ({e}); remove it or fix it"
        ) from e


# ── fidelity ────────────────────────────────────────────────────────────────────────────────────


def _verified(g: _Graph, shape: tuple[int, int, int]) -> int:
    """Step 4: run both on the same random batch; returns the number of classes."""
    key = (g.sha256, tuple(shape))
    if key in _VERIFIED:
        return _VERIFIED[key]
    onnxruntime = import_onnxruntime()  # heavy, only to check a conversion; its telemetry off

    gen = torch.Generator().manual_seed(0)
    x = torch.rand((_FIDELITY_BATCH, *shape), generator=gen)  # (B, C, H, W) in [0, 1)
    try:
        with torch.inference_mode():
            got = g.module(x)
    except Exception as e:  # the converted graph failing on its own input shape is the file's
        fixed = f"; it was exported for batch size {g.batch} only: {EXPORT_HINT}" if g.batch else ""
        raise ModelLoadError(
            f"{g.name} fails on {_FIDELITY_BATCH} images of shape {tuple(shape)} once converted ({str(e)[:300]}){fixed}"
        ) from e
    out = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
    if not isinstance(got, torch.Tensor) or got.dim() != 2:
        raise ModelLoadError(f"{g.name} returns {out} for {_FIDELITY_BATCH} images; kdcore needs logits (B, classes)")
    if got.shape[0] != _FIDELITY_BATCH:
        raise ModelLoadError(
            f"{g.name} returns {out} for {_FIDELITY_BATCH} images: it works for one batch size only; {EXPORT_HINT}"
        )
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(g.proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        (ref,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    except Exception as e:  # onnxruntime refusing or failing on the graph: the file's
        raise ModelLoadError(f"onnxruntime cannot run {g.name} on input {tuple(shape)} ({str(e).strip()[:300]})") from e
    ref = torch.from_numpy(ref).float()
    diff = (got.float() - ref).abs().max().item() if ref.shape == got.shape else math.inf
    bound = ATOL + RTOL * ref.abs().max().item()
    log.info("onnx: %s converted; max |logit difference| to onnxruntime %.3g (bound %.3g)", g.name, diff, bound)
    if not diff <= bound:
        raise ModelLoadError(
            f"{g.name} converted to PyTorch does not compute what onnxruntime computes (logits differ by up to "
            f"{diff:.3g}, more than {bound:.3g}); {EXPORT_HINT}"
        )
    _VERIFIED[key] = int(got.shape[1])
    return _VERIFIED[key]
