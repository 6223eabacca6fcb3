"""An ONNX graph (already checked by `kdcore.models.onnxfile`) made into a trainable PyTorch module.

1. Normalised so that onnx2torch converts it: 'ai.onnx' spelled ''; `Constant` nodes and `Identity`
   copies of a weight become weights of their own (the TorchScript exporter shares one zero bias
   between convolutions through Identity); Reshape's allowzero=1 dropped where the shape is a
   constant without a 0 (it changes nothing then; the dynamo exporter always sets it); the batch
   dimension made symbolic; a dense layer written as MatMul + Add (tf2onnx's Keras Dense,
   skl2onnx's MLP) made a Gemm, which becomes an nn.Linear. An opset newer than onnx2torch 1.5.15
   converts (PyTorch's default `dynamo=True` exporter writes opset 18+: Reshape 19, ReduceMean 18)
   is brought down with `onnx.version_converter` to the newest opset at which every operator
   converts; an operator that converts at no opset is refused by name.
2. onnx2torch gives an `fx.GraphModule` of real torch layers named after the ONNX nodes
   (`features/features/0/Conv`): Conv → nn.Conv2d, Gemm → nn.Linear, BatchNormalization →
   nn.BatchNorm2d — all with `reset_parameters`, so `build` re-initialises every parameter. A
   float weight that stayed a constant buffer (a MatMul's or Einsum's weight, a BatchNorm fed by
   computed tensors) is refused: a student could neither re-initialise nor learn it. Other float
   constants (a baked-in normalisation, a ViT's position embedding) stay constants, as in the file.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

from kdcore.errors import ModelLoadError

log = logging.getLogger("kdcore")

EXPORT_HINT = (
    "export it again with `torch.onnx.export(model.eval(), (torch.zeros(1, C, H, W),), 'model.onnx', "
    "dynamic_shapes=({0: torch.export.Dim('batch')},), external_data=False)`"
)
_WEIGHT_OPS = ("OnnxMatMul", "OnnxGemm", "OnnxBatchNorm", "OnnxInstanceNorm", "OnnxLayerNorm", "OnnxEinsum")
_MIN_OPSET = 7  # the oldest opset tried when bringing a graph down for onnx2torch


def convert(proto, name: str) -> tuple[object, nn.Module]:
    """Normalise, bring the opset down where needed, convert, refuse constant weights.
    Returns the normalised graph at its own opset (what onnxruntime checks against) and the module."""
    import onnx2torch  # heavy: onnx2torch, only for .onnx files

    proto = _normalised(proto)
    convertible = _at_convertible_opset(proto, name)
    try:
        module = onnx2torch.convert(convertible)
    except Exception as e:  # onnx2torch's NotImplementedError/KeyError/ValueError on what it cannot map
        raise ModelLoadError(
            f"{name} could not be converted to PyTorch (onnx2torch: {type(e).__name__}: {str(e)[:300]}); {EXPORT_HINT}"
        ) from e
    ints = [n for n, p in module.named_parameters() if not p.is_floating_point()]
    if ints:
        raise ModelLoadError(
            f"{name} has layers whose weights are not floating point ({', '.join(ints[:3])}); a quantised or "
            "integer model cannot be distilled or fine-tuned: export the float model"
        )
    stuck = _constant_weights(module)
    if stuck:
        raise ModelLoadError(
            f"{name} has weights that convert to constants, not layers ({', '.join(stuck[:3])}), so a student "
            "could neither re-initialise nor learn them; export dense layers as Gemm (PyTorch's nn.Linear does) "
            "and keep BatchNorm's statistics as weights"
        )
    return proto, module


def _normalised(proto):
    import onnx  # heavy: onnx, only for .onnx files

    proto = copy.deepcopy(proto)
    graph = proto.graph
    for op in proto.opset_import:
        op.domain = "" if op.domain == "ai.onnx" else op.domain
    consts = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        node.domain = "" if node.domain == "ai.onnx" else node.domain
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        source = consts.get(node.input[0]) if node.op_type == "Identity" and node.input else None
        if (node.op_type == "Constant" and value is not None) or source is not None:
            t = copy.deepcopy(value if source is None else source)
            t.name = node.output[0]
            graph.initializer.append(t)
            consts[t.name] = t
            continue
        if node.op_type == "Reshape" and node.input[1] in consts:
            shape = onnx.numpy_helper.to_array(consts[node.input[1]])
            if 0 not in shape:
                kept = [a for a in node.attribute if a.name != "allowzero"]
                del node.attribute[:]
                node.attribute.extend(kept)
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    weights = {t.name for t in graph.initializer}
    for value in [*(i for i in graph.input if i.name not in weights), *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del graph.value_info[:]  # inferred again by onnx2torch, now with a symbolic batch
    _dense_as_gemm(proto)
    return proto


def _dense_as_gemm(proto) -> None:
    """MatMul(X, W) + Add(·, b) with X of rank 2, W a 2-D weight and b a 1-D one (a dense layer as
    tf2onnx writes Keras' Dense and skl2onnx an MLP) becomes Gemm(X, W, b), which onnx2torch makes an
    nn.Linear; left as they are, W and b would be constants a student can neither reset nor learn."""
    import onnx  # heavy: onnx, only for .onnx files

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # no shapes, no rewrite: the constant-weight check still refuses
        return
    graph = proto.graph
    values = [*inferred.graph.value_info, *inferred.graph.input]
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}
    consts = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    opset = next(op.version for op in proto.opset_import if op.domain == "")
    adds = {n.input[0]: n for n in graph.node if n.op_type == "Add" and len(n.input) == 2}
    adds.update({n.input[1]: n for n in graph.node if n.op_type == "Add" and len(n.input) == 2})
    dropped = set()
    for node in graph.node:
        w = consts.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2 or ranks.get(node.input[0]) != 2:
            continue
        add, out = adds.get(node.output[0]), node.output[0]
        bias = None
        if add is not None and uses.get(out) == 1 and out not in outputs:
            other = add.input[1] if add.input[0] == out else add.input[0]
            b = consts.get(other)
            bias = other if b is not None and list(b.dims) == [w.dims[1]] else None
        if bias is None and opset < 11:
            continue  # Gemm's bias is optional from opset 11 only
        node.op_type = "Gemm"
        if bias is not None:
            node.input.append(bias)
            node.output[0] = add.output[0]
            dropped.add(out)  # the Add that read it is gone; nothing else did
    if dropped:
        kept = [n for n in graph.node if not (n.op_type == "Add" and dropped & set(n.input))]
        del graph.node[:]
        graph.node.extend(kept)


def _at_convertible_opset(proto, name: str):
    from onnx import version_converter  # heavy: onnx

    opset = next(op.version for op in proto.opset_import if op.domain == "")
    for target in range(opset, _MIN_OPSET - 1, -1):
        if not _unconvertible(proto, target):
            break
    else:
        never = [op for op in _unconvertible(proto, opset) if all(op in _unconvertible(proto, v) for v in range(7, 25))]
        ops = never or _unconvertible(proto, opset)
        raise ModelLoadError(
            f"{name} uses operators that cannot be converted to PyTorch (onnx2torch 1.5.15): {', '.join(ops)}; "
            "export the model without them"
        )
    if target == opset:
        return proto
    try:
        converted = version_converter.convert_version(proto, target)
    except Exception as e:  # the converter's adapter failures
        raise ModelLoadError(
            f"{name} is at ONNX opset {opset}, which onnx2torch converts only from opset {target}, and onnx's "
            f"version converter failed ({str(e).strip()[:200]}); export with opset_version={target}"
        ) from e
    log.info("onnx: %s converted from opset %d to %d for onnx2torch", name, opset, target)
    return converted


def _unconvertible(proto, opset: int) -> list[str]:
    from onnx2torch.node_converters.registry import get_converter  # heavy: onnx2torch

    missing = set()
    for node in proto.graph.node:
        try:
            get_converter(operation_type=node.op_type, version=opset, domain=node.domain)
        except NotImplementedError:
            missing.add(node.op_type)
    return sorted(missing)


def _constant_weights(module: nn.Module) -> list[str]:
    """`<buffer> (input of <node>)` for float buffers of more than one element fed to a weight op
    that onnx2torch left as an op on constants instead of a torch layer."""
    modules = dict(module.named_modules())
    buffers = dict(module.named_buffers())
    stuck = []
    for node in module.graph.nodes:
        if node.op != "call_module" or type(modules[node.target]).__name__ not in _WEIGHT_OPS:
            continue
        for arg in node.all_input_nodes:
            t = buffers.get(arg.target) if arg.op == "get_attr" else None
            if t is not None and t.is_floating_point() and t.numel() > 1:
                stuck.append(f"{arg.target} (input of {node.target})")
    return stuck
