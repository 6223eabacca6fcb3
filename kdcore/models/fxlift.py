"""Lifting an exported graph into real layers, so that kdcore can hook, mask and train it.

`ExportedProgram.module()` gives an fx.GraphModule that calls `aten.conv2d`, `aten.linear`,
`aten.batch_norm`, ... as functions on weights held by plain containers. Everything in kdcore
that looks at layers finds them by class (`choose_layer`: `isinstance(m, nn.Conv2d)`, forward
hooks), BatchNorm must follow `.train()/.eval()`, and that module cannot even switch modes
(`train()` raises NotImplementedError). `lift(gm)` builds a plain `fx.GraphModule` instead:

1. Each call of a liftable op whose weights are read straight from the module's attributes
   (one owner path: `features.0.weight` and `features.0.bias`) becomes a `call_module` to a
   real layer at that owner path, holding the SAME tensors: `aten.conv2d` (and
   `aten.convolution`, not transposed) → nn.Conv2d (1-d and 3-d too), `aten.linear` →
   nn.Linear, `aten.batch_norm` → nn.BatchNorm1d/2d/3d (by the input's rank; its running
   statistics and `num_batches_tracked` too), `aten.group_norm` → nn.GroupNorm, `aten.layer_norm`
   → nn.LayerNorm. The state_dict keys therefore stay what they were in the exported model. These are the ops of
   `torch.export.export`'s default (training) IR; a program decomposed to core ATen before saving
   (`run_decompositions()`: `addmm`, `_native_batch_norm_legit_no_training`) keeps its linear and
   norm layers functional, with their weights in Containers (step 4).
2. `aten.dropout` becomes nn.Dropout(p) named after the module it came from (nn_module_stack):
   the exported flag (`train=False` after exporting in eval mode) gives way to the module's mode.
   So does BatchNorm's baked-in `training` flag, and a train-mode export's own
   `num_batches_tracked.add_(1)` is removed (the lifted layer counts).
3. Every other node is copied as it is, with its metadata dropped (it holds fake tensors that
   deep copies of the model should not carry). The pytree flattening of the exported module and
   its input guards are not copied: the graph takes one tensor, and the batch size is free.
4. Tensors the graph reads directly (a ViT's `cls_token`, a layer-scale gamma) stay where they
   were, in containers (`Container`) whose `reset_parameters` re-draws them from
   trunc_normal(std=0.02), timm's initialisation of tokens and position embeddings (a 1-d `weight`
   or `bias`, a norm's scale and shift, starts at 1 and 0 as PyTorch's norm layers do), so that
   `kdcore.models.reinit.reinitialise` can make a fresh student of any lifted graph.
"""

from __future__ import annotations

import re

import torch
from torch import fx, nn

aten = torch.ops.aten
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_FREE_STD = 0.02


class Container(nn.Module):
    """A module of the exported model that only holds tensors; `reset_parameters` re-draws its
    own parameters (those no lifted layer took over)."""

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters(recurse=False):
                if p.dim() == 1 and name in ("weight", "bias"):  # a norm's scale and shift no layer took over
                    nn.init.ones_(p) if name == "weight" else nn.init.zeros_(p)
                else:
                    nn.init.trunc_normal_(p, std=_FREE_STD)


class LiftedGraph(fx.GraphModule):
    """The lifted graph: a plain GraphModule whose root is a `Container` too (train/eval work)."""

    def reset_parameters(self) -> None:
        Container.reset_parameters(self)


def _args(node: fx.Node) -> dict:
    """The node's arguments by name, defaults filled in from the op's schema."""
    schema = node.target._schema
    out = {}
    for i, a in enumerate(schema.arguments):
        if i < len(node.args):
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


class _Lifter:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.tensors = dict(gm.named_parameters()) | dict(gm.named_buffers())
        for node in gm.graph.find_nodes(op="get_attr"):  # tensor constants are plain attributes
            if node.target not in self.tensors:
                self.tensors[node.target] = _attr(gm, node.target)
        self.modules: dict[str, nn.Module] = {}  # owner path → lifted layer
        self.taken: set[str] = set()  # tensor names a lifted layer owns

    def owner(self, args: dict, names: dict[str, str], required: tuple[str, ...]) -> str | None:
        """The common owner path of the get_attr arguments `names` (arg → attribute), or None."""
        owners = set()
        for arg, attr in names.items():
            node = args.get(arg)
            if node is None:
                if arg in required:
                    return None
                continue
            if not (isinstance(node, fx.Node) and node.op == "get_attr" and node.target in self.tensors):
                return None
            prefix, _, last = node.target.rpartition(".")
            if last != attr or not prefix or node.target in self.taken:
                return None
            owners.add(prefix)
        return owners.pop() if len(owners) == 1 else None

    def layer(self, node: fx.Node) -> tuple[str, nn.Module, fx.Node] | None:
        """(owner path, a new layer holding the node's tensors, its input) for a liftable node."""
        if node.target in (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default):
            return self.conv(node)
        if node.target is aten.linear.default:
            a = _args(node)
            path = self.owner(a, {"weight": "weight", "bias": "bias"}, ("weight",))
            if path is None:
                return None
            w = self.tensors[f"{path}.weight"]
            layer = nn.Linear(w.shape[1], w.shape[0], bias=a.get("bias") is not None, device="meta")
            return self.done(self.fill(path, layer, ("weight", "bias")), a["input"])
        if node.target is aten.batch_norm.default:
            return self.batch_norm(node)
        if node.target is aten.group_norm.default:
            a = _args(node)
            path = self.owner(a, {"weight": "weight", "bias": "bias"}, ("weight",))
            if path is None:
                return None
            channels = self.tensors[f"{path}.weight"].shape[0]
            groups = int(a["num_groups"])
            if a.get("bias") is None or channels % groups:
                return None  # nn.GroupNorm has both affine tensors or neither
            layer = nn.GroupNorm(groups, channels, eps=a["eps"], device="meta")
            return self.done(self.fill(path, layer, ("weight", "bias")), a["input"])
        if node.target is aten.layer_norm.default:
            a = _args(node)
            path = self.owner(a, {"weight": "weight", "bias": "bias"}, ("weight",))
            if path is None:
                return None
            shape = tuple(a["normalized_shape"])
            if tuple(self.tensors[f"{path}.weight"].shape) != shape:
                return None
            layer = nn.LayerNorm(shape, eps=a["eps"], bias=a.get("bias") is not None, device="meta")
            return self.done(self.fill(path, layer, ("weight", "bias")), a["input"])
        return None

    def conv(self, node: fx.Node):
        a = _args(node)
        path = self.owner(a, {"weight": "weight", "bias": "bias"}, ("weight",))
        if path is None or a.get("transposed") or any(a.get("output_padding", ())):  # not a ConvTranspose
            return None
        w = self.tensors[f"{path}.weight"]
        cls = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}.get(w.dim())
        if cls is None:
            return None
        groups = int(a["groups"])
        layer = cls(
            w.shape[1] * groups,
            w.shape[0],
            tuple(w.shape[2:]),
            stride=tuple(a["stride"]),
            padding=tuple(a["padding"]),
            dilation=tuple(a["dilation"]),
            groups=groups,
            bias=a.get("bias") is not None,
            device="meta",
        )
        return self.done(self.fill(path, layer, ("weight", "bias")), a["input"])

    def batch_norm(self, node: fx.Node):
        a = _args(node)
        names = {"weight": "weight", "bias": "bias", "running_mean": "running_mean", "running_var": "running_var"}
        path = self.owner(a, names, ())
        x = a["input"]
        val = x.meta.get("val") if isinstance(x, fx.Node) else None
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(getattr(val, "ndim", 0))
        if path is None or cls is None:
            return None
        ref = next(self.tensors[f"{path}.{k}"] for k in names if a.get(k) is not None)
        tracked = a.get("running_mean") is not None
        layer = cls(
            ref.shape[0],
            eps=a["eps"],
            momentum=a["momentum"],
            affine=a.get("weight") is not None,
            track_running_stats=tracked,
            device="meta",
        )
        keep = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        if tracked and f"{path}.num_batches_tracked" not in self.tensors:
            layer.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        return self.done(self.fill(path, layer, keep), x)

    @staticmethod
    def done(filled, x):
        return None if filled is None else (*filled, x)

    def fill(self, path: str, layer: nn.Module, names: tuple[str, ...]):
        """(path, layer, input) with the exported tensors put into `layer`, or None when they do
        not cover it (it was created on the meta device: no memory, no random draws)."""
        keys = []
        for name in names:
            key = f"{path}.{name}"
            if key not in self.tensors or getattr(layer, name, None) is None:
                continue
            t = self.tensors[key]
            if tuple(t.shape) != tuple(getattr(layer, name).shape):
                return None
            if isinstance(t, nn.Parameter):
                layer.register_parameter(name, t)
            else:
                layer.register_buffer(name, t)
            keys.append(key)
        if any(t.is_meta for t in (*layer.parameters(), *layer.buffers())):
            return None  # e.g. a batch_norm with a weight but no bias
        self.taken.update(keys)
        return path, layer


def lift(gm: fx.GraphModule) -> LiftedGraph:
    """A plain GraphModule of real layers for the exported module `gm` (steps 1-4 above).

    `gm` is `ExportedProgram.module()`; its tensors are shared, not copied. The result is in
    eval mode, like the exported model.
    """
    lifter = _Lifter(gm)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    dropouts = 0
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == "_guards_fn":  # the exported module's input guards
            continue
        if node.op == "output":
            (value,) = node.args
            if isinstance(value, (tuple, list)) and len(value) == 1:  # the pytree of one output
                value = value[0]
            env[node] = graph.output(env[value])
            continue
        found = lifter.layer(node) if node.op == "call_function" else None
        if found is not None:
            path, layer, x = found
            lifter.modules[path] = layer
            new = graph.call_module(path, (env[x],))
        elif node.op == "call_function" and node.target is aten.dropout.default:
            a = _args(node)
            path = _dropout_path(node, lifter, dropouts)
            dropouts += 1
            lifter.modules[path] = nn.Dropout(float(a["p"]))
            new = graph.call_module(path, (env[a["input"]],))
        else:
            new = graph.node_copy(node, lambda n: env[n])
            new.meta = {}
        env[node] = new
    _drop_batch_counts(graph, lifter)
    root = _root(gm, lifter, graph)
    out = LiftedGraph(root, graph)
    # GraphModule copies only what the graph reads, into plain nn.Modules: put back the whole tree
    # (Containers, tensors the graph does not read such as an unused num_batches_tracked).
    for name, child in root.named_children():
        out.add_module(name, child)
    for name, p in root.named_parameters(recurse=False):
        out.register_parameter(name, p)
    for name, b in root.named_buffers(recurse=False):
        out.register_buffer(name, b, persistent=name not in root._non_persistent_buffers_set)
    out.graph.eliminate_dead_code()  # what only the dropped guards used (sym_size of the input)
    out.graph.lint()
    out.recompile()
    return out.eval()


def _drop_batch_counts(graph: fx.Graph, lifter: _Lifter) -> None:
    """A model exported in train mode counts its batches in the graph (`num_batches_tracked.add_(1)`);
    a lifted BatchNorm counts them itself, so that count is removed."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is aten.add_.Tensor and isinstance(node.args[0], fx.Node):
            path, _, last = str(node.args[0].target).rpartition(".")
            is_norm = isinstance(lifter.modules.get(path), nn.modules.batchnorm._BatchNorm)
            if node.args[0].op == "get_attr" and last == "num_batches_tracked" and is_norm:
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _dropout_path(node: fx.Node, lifter: _Lifter, index: int) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()), ("",))[0] if stack else ""
    if not (isinstance(path, str) and _NAME.fullmatch(path)) or path in lifter.modules or _used(lifter, path):
        path = f"dropout_{index}"
    return path


def _used(lifter: _Lifter, path: str) -> bool:
    return any(k == path or k.startswith(path + ".") for k in lifter.tensors)


def _root(gm: fx.GraphModule, lifter: _Lifter, graph: fx.Graph) -> Container:
    """Containers holding every lifted layer and every tensor the new graph still reads."""
    root = Container()

    def container(path: str) -> nn.Module:
        m = root
        for part in filter(None, path.split(".")):
            if part not in m._modules:
                m.add_module(part, Container())
            m = m._modules[part]
        return m

    for path, layer in lifter.modules.items():
        parent, _, name = path.rpartition(".")
        container(parent).add_module(name, layer)
    state = gm.state_dict(keep_vars=True)
    for key, t in lifter.tensors.items():
        if key in lifter.taken:
            continue
        parent, _, name = key.rpartition(".")
        owner = container(parent)
        if isinstance(t, nn.Parameter):
            owner.register_parameter(name, t)
        else:
            owner.register_buffer(name, t, persistent=key in state)
    return root
