"""An ONNX graph (already checked by `kdcore.models.onnxfile`) made into a trainable PyTorch module.

1. Normalised (what onnxruntime then checks against): 'ai.onnx' spelled ''; `Constant` nodes and
   `Identity` copies of a weight become weights of their own (the TorchScript exporter shares one
   zero bias between convolutions through Identity); Reshape's allowzero=1 dropped where the shape
   is a constant without a 0 (it changes nothing then; the dynamo exporter always sets it); the
   batch dimension made symbolic.
2. A private copy for onnx2torch, with the operators kdcore adds (`kdcore.models.onnxops`: Gelu,
   Mish, GroupNormalization, dense layers): its shapes inferred while every node is still standard;
   a dense layer written as MatMul + Add (nn.Linear on any rank as the dynamo exporter writes it,
   tf2onnx's Keras Dense, skl2onnx's MLP) made one `Linear` node, which becomes an nn.Linear. An
   opset newer than onnx2torch 1.5.15 converts (PyTorch's default `dynamo=True` exporter writes
   opset 20: Reshape 19, ReduceMean 18) is brought down with `onnx.version_converter` to the newest
   opset at which every operator converts, operators that have no earlier version (Gelu 20) kept
   out of its way in kdcore's domain; an operator that converts at no opset is refused by name.
3. onnx2torch gives an `fx.GraphModule` of real torch layers named after the ONNX nodes
   (`features/features/0/Conv`): Conv → nn.Conv2d, Gemm and dense layers → nn.Linear,
   BatchNormalization → nn.BatchNorm2d, LayerNormalization → nn.LayerNorm — all with
   `reset_parameters`, so `build` re-initialises every parameter. A float weight that stayed a
   constant buffer (a MatMul's weight on the left, an Einsum's, a BatchNorm fed by computed tensors)
   is refused: a student could neither re-initialise nor learn it. Other float constants (a baked-in
   normalisation, a ViT's position embedding, the affine of a GroupNorm torch decomposes) stay
   constants, as in the file.
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
_WEIGHT_OPS = (
    "OnnxMatMul",
    "OnnxGemm",
    "OnnxBatchNorm",
    "OnnxInstanceNorm",
    "OnnxLayerNorm",
    "OnnxGroupNorm",
    "OnnxEinsum",
)
_MIN_OPSET = 7  # the oldest opset tried when bringing a graph down for onnx2torch


def convert(proto, name: str) -> tuple[object, nn.Module]:
    """Normalise, bring the opset down where needed, convert, refuse constant weights.
    Returns the normalised graph at its own opset (what onnxruntime checks against) and the module."""
    import onnx2torch  # heavy: onnx2torch, only for .onnx files

    from kdcore.models import onnxops  # heavy: imports onnx2torch; registers kdcore's converters

    proto = _normalised(proto)
    convertible = _at_convertible_opset(_for_onnx2torch(proto), name)
    try:
        module = onnx2torch.convert(convertible)
        onnxops.without_domain(module)
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
    del graph.value_info[:]  # inferred again (`_for_onnx2torch`), now with a symbolic batch
    return proto


def _for_onnx2torch(proto):
    """Step 2's copy: shapes inferred on the standard graph (onnx2torch's LayerNormalization and
    GroupNormalization read them, and no shape is inferred through a node of kdcore's domain), then
    dense layers made `Linear` nodes."""
    import onnx  # heavy: onnx, only for .onnx files

    from kdcore.models import onnxops  # heavy: imports onnx2torch; registers kdcore's converters

    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # no shapes: onnx2torch infers what it can, and a converter needing one refuses
        proto = copy.deepcopy(proto)
    onnxops.dense_as_linear(proto)
    return proto


def _at_convertible_opset(proto, name: str):
    from onnx import version_converter  # heavy: onnx

    from kdcore.models import onnxops  # heavy: imports onnx2torch; registers kdcore's converters

    opset = next(op.version for op in proto.opset_import if op.domain == "")
    if not _unconvertible(proto, opset):
        return proto
    proto, moved = onnxops.portable(proto)  # Gelu & co. have no earlier version to be brought to
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
    log.info("onnx: %s converted from opset %d to %d for onnx2torch (kept: %s)", name, opset, target, moved)
    return converted


def _unconvertible(proto, opset: int) -> list[str]:
    from onnx2torch.node_converters.registry import get_converter  # heavy: onnx2torch

    missing = set()
    for node in proto.graph.node:
        try:
            get_converter(operation_type=node.op_type, version=opset if node.domain == "" else 1, domain=node.domain)
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
