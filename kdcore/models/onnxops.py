"""The ONNX operators kdcore adds to onnx2torch 1.5.15, registered through its own extension point
(`onnx2torch.node_converters.add_converter`), each becoming a torch layer a student can re-initialise.

Importing this module registers them (it imports onnx2torch: `kdcore.models.onnxconvert` imports it
only when converting a file). What PyTorch's default exporter (dynamo, opset 20) writes for modern
architectures and onnx2torch lacks:

- `Gelu` (opset 20; approximate "none" and "tanh") → nn.GELU: ViT, ConvNeXt, Swin, MLP-Mixer.
- `Mish` (opset 18, 22) → nn.Mish.
- `GroupNormalization` (opset 21) → nn.GroupNorm, constant scale and bias its parameters (torch's
  exporter decomposes nn.GroupNorm into InstanceNormalization; other exporters write the operator).
  Version 18, whose scale is per group, is refused by `onnx.checker` as deprecated before this.
- A dense layer on any rank: MatMul(X, W) [+ Add(·, b)] with W a constant matrix and b a constant
  vector of its width → nn.Linear (`dense_as_linear`). nn.Linear on (B, tokens, C) or channels-last
  (B, H, W, C) is what ViT, Mixer and ConvNeXt blocks export as; left a MatMul on a constant, its
  weight could be neither re-initialised nor learnt.
Checked and converted by onnx2torch as they are: LayerNormalization (17; nn.LayerNorm where scale
and bias are constants), HardSwish, HardSigmoid, Erf (the TorchScript exporter's GELU),
InstanceNormalization, Softmax and MatMul between computed tensors (attention as torch exports it at
opset 20; the `Attention` operator of opset 23 is not written by default and is not converted).

kdcore's own domain (`DOMAIN`) carries nodes that exist only to be converted: `Linear`, and
(`portable`) an operator with no earlier version while the rest of the graph is brought down to an
opset onnx2torch converts (onnx's version converter cannot bring `Gelu` below 20, and onnx2torch
converts ReduceMean only up to 13). Nodes of this domain are written by kdcore into its private copy
for onnx2torch and nowhere else: `kdcore.models.onnxfile` refuses a file that uses any domain but the
standard one before converting it, and onnxruntime checks the graph as the file has it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from onnx import defs, helper
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

DOMAIN = "kdcore"  # never in a file (refused there); only in the copy handed to onnx2torch (no dot: a module name)
# Operators (at the version the graph's opset gives them) that convert the same at any opset, so they
# travel in DOMAIN while the graph is brought down.
_PORTABLE = {("Gelu", 20), ("Mish", 18), ("Mish", 22), ("GroupNormalization", 21), ("LayerNormalization", 17)}


# ── converters ──────────────────────────────────────────────────────────────────────────────────


@add_converter(operation_type="Gelu", version=20)
@add_converter(operation_type="Gelu", version=1, domain=DOMAIN)
def _gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f'Gelu with approximate="{approximate}"')
    return OperationConverterResult(nn.GELU(approximate=approximate), onnx_mapping_from_node(node))


@add_converter(operation_type="Mish", version=18)
@add_converter(operation_type="Mish", version=22)
@add_converter(operation_type="Mish", version=1, domain=DOMAIN)
def _mish(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return OperationConverterResult(nn.Mish(), onnx_mapping_from_node(node))


class OnnxGroupNorm(nn.Module, OnnxToTorchModule):
    """GroupNormalization whose scale and bias (C,) are computed, not constants."""

    def __init__(self, groups: int, eps: float):
        super().__init__()
        self.groups, self.eps = groups, eps

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.groups, scale, bias, self.eps)


@add_converter(operation_type="GroupNormalization", version=21)
@add_converter(operation_type="GroupNormalization", version=1, domain=DOMAIN)
def _group_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    groups, eps = node.attributes["num_groups"], node.attributes.get("epsilon", 1e-5)
    x, scale, bias = node.input_values
    if not (scale in graph.initializers and bias in graph.initializers):
        return OperationConverterResult(OnnxGroupNorm(groups, eps), onnx_mapping_from_node(node))
    w, b = graph.initializers[scale].to_torch(), graph.initializers[bias].to_torch()
    if w.numel() % groups:
        raise NotImplementedError(f"GroupNormalization of {w.numel()} channels in {groups} groups")
    layer = nn.GroupNorm(groups, w.numel(), eps=eps)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    return OperationConverterResult(layer, OnnxMapping(inputs=(x,), outputs=node.output_values))


@add_converter(operation_type="Linear", version=1, domain=DOMAIN)
def _linear(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Linear(X, W[, b]) written by `dense_as_linear`: X @ W + b, W (in, out) and b (out,) constants."""
    w = graph.initializers[node.input_values[1]].to_torch()  # (in, out)
    b = graph.initializers[node.input_values[2]].to_torch() if len(node.input_values) > 2 else None
    layer = nn.Linear(w.shape[0], w.shape[1], bias=b is not None)
    with torch.no_grad():
        layer.weight.copy_(w.T)  # nn.Linear keeps (out, in)
        if b is not None:
            layer.bias.copy_(b)
    return OperationConverterResult(layer, OnnxMapping(inputs=node.input_values[:1], outputs=node.output_values))


# onnx2torch's own LayerNormalization converter (nn.LayerNorm), for the node when it travels in DOMAIN
add_converter(operation_type="LayerNormalization", version=1, domain=DOMAIN)(get_converter("LayerNormalization", 17))


# ── rewrites of the copy handed to onnx2torch ──────────────────────────────────────────────────


def dense_as_linear(proto) -> None:
    """MatMul(X, W) + Add(·, b), W a 2-D constant and b a 1-D constant of W's width (or MatMul alone),
    becomes one `Linear` node of DOMAIN (in place). X may have any rank: X @ W + b over the last
    dimension is what nn.Linear computes. An Add whose other output users or graph outputs need the
    MatMul's own result keeps it apart."""
    graph = proto.graph
    consts = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    adds: dict[str, object] = {}
    for n in graph.node:
        if n.op_type == "Add" and len(n.input) == 2:
            adds.setdefault(n.input[0], n)
            adds.setdefault(n.input[1], n)
    dropped = set()
    for node in graph.node:
        w = consts.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2 or node.input[0] in consts:
            continue
        out, add = node.output[0], adds.get(node.output[0])
        if add is not None and uses.get(out) == 1 and out not in outputs:
            other = add.input[1] if add.input[0] == out else add.input[0]
            b = consts.get(other)
            if b is not None and list(b.dims) == [w.dims[1]]:
                node.input.append(other)
                node.output[0] = add.output[0]
                dropped.add(id(add))
        node.op_type, node.domain = "Linear", DOMAIN
    if dropped:
        kept = [n for n in graph.node if id(n) not in dropped]
        del graph.node[:]
        graph.node.extend(kept)
    _use_domain(proto)


def portable(proto) -> tuple[object, list[str]]:
    """A copy of `proto` whose portable operators (see `_PORTABLE`) are nodes of DOMAIN, and their names."""
    opset = next(op.version for op in proto.opset_import if op.domain == "")
    proto, moved = copy.deepcopy(proto), set()
    for node in proto.graph.node:
        if node.domain != "":
            continue
        try:
            since = defs.get_schema(node.op_type, max_inclusive_version=opset, domain="").since_version
        except defs.SchemaError:
            continue
        if (node.op_type, since) in _PORTABLE:
            node.domain = DOMAIN
            moved.add(node.op_type)
    _use_domain(proto)
    return proto, sorted(moved)


def _use_domain(proto) -> None:
    used = any(n.domain == DOMAIN for n in proto.graph.node)
    if used and all(op.domain != DOMAIN for op in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(DOMAIN, 1))


def without_domain(module) -> None:
    """onnx2torch names a node's module `<domain>/<node name>`: the layers of nodes that travelled in
    DOMAIN get their node's own name back (in place, order kept), as if converted from the file's graph."""
    prefix, renamed = f"{DOMAIN}/", {}
    for node in module.graph.nodes:
        if node.op != "call_module" or not node.target.startswith(prefix):
            continue
        new = node.target[len(prefix) :]
        if new not in module._modules and new not in renamed.values():
            renamed[node.target] = new
            node.target = new
    if renamed:
        module._modules = {renamed.get(k, k): v for k, v in module._modules.items()}
        module.recompile()
