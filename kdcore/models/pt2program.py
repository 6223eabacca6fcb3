"""Step 4 of `kdcore.models.pt2file`: the program JSON of a torch.export archive, checked as data.

torch's deserializer turns parts of that JSON into code: operator names are resolved by `getattr`
from `torch`, `math` or `operator` (so `torch.serialization.os.system` is `os.system`), symbolic
sizes (`expr_str`) go through `sympy.sympify` (Python `eval`), and `ExportedProgram.module()`
`exec`s the `guards_code` strings. `check_program` makes the JSON plain data before torch sees it:

- every node's operator is in `OPS`: the aten ops of image classifiers (convolutions, linear,
  norms, activations, pooling, attention, shape ops), no factories that allocate from their
  arguments, no file or custom ops, no higher-order ops (subgraphs); arguments of plain kinds
  only (no graphs, custom objects or operators);
- every `expr_str` fits a small sympy grammar: size symbols (`s0`, `Symbol('s0', positive=True,
  integer=True)`), integers, + - * / //, comparisons and a few sympy functions (`Max`, `FloorDiv`,
  ...): no dots, no other names, no `**`, at most 1000 characters;
- inputs are user inputs, parameters, buffers and tensor constants (no custom objects, tokens),
  outputs user outputs or buffer mutations; state names are dotted Python names;
- the input/output structure (treespecs) is tuples, lists and dicts: torch's `treespec_loads`
  imports the module named in a defaultdict's context or in an `__enum__` object;
- `guards_code` is dropped (kdcore checks the lifted graph by running it), and node metadata is
  kept only for `nn_module_stack` (strings torch never resolves).

`io_shapes` reads the (C, H, W) input and the class count from the graph's tensor values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kdcore.errors import ModelLoadError

_ATEN = """
    conv1d conv2d conv3d convolution linear addmm mm bmm matmul t batch_norm _native_batch_norm_legit_no_training
    layer_norm native_layer_norm group_norm native_group_norm relu relu_ gelu gelu_ silu silu_ sigmoid sigmoid_
    tanh hardswish hardswish_ hardsigmoid hardsigmoid_ hardtanh hardtanh_ relu6 leaky_relu leaky_relu_ elu elu_
    mish softmax _softmax log_softmax _log_softmax add add_ sub sub_ mul mul_ div div_ neg rsqrt sqrt exp erf
    pow clamp clamp_min clamp_max flatten view reshape _unsafe_view permute transpose contiguous clone expand
    expand_as cat stack split split_with_sizes chunk unbind select slice squeeze unsqueeze adaptive_avg_pool1d
    adaptive_avg_pool2d _adaptive_avg_pool2d avg_pool2d max_pool2d max_pool2d_with_indices mean sum amax
    dropout scaled_dot_product_attention pad constant_pad_nd pixel_shuffle upsample_nearest2d
    upsample_bilinear2d detach alias sym_size _assert_tensor_metadata _assert_scalar
"""
OPS = frozenset(
    {f"torch.ops.aten.{op}" for op in _ATEN.split()}
    | {"_operator.getitem", "_operator.add", "_operator.sub", "_operator.mul", "_operator.floordiv"}
)
_ARG_KINDS = frozenset(
    "as_none as_tensor as_tensors as_int as_ints as_float as_floats as_string as_strings as_sym_int "
    "as_sym_ints as_scalar_type as_memory_format as_layout as_device as_bool as_bools as_sym_bool as_sym_bools "
    "as_optional_tensors as_optional_tensor as_sym_float as_sym_floats as_int_lists as_float_lists".split()
)
_INPUTS, _OUTPUTS = {"user_input", "parameter", "buffer", "tensor_constant"}, {"user_output", "buffer_mutation"}
_SYMPY_NAMES = "Symbol Integer positive integer nonnegative True False Eq Ne Lt Le Gt Ge Max Min Mod FloorDiv CleanDiv"
_EXPR_TOKEN = re.compile(
    rf"\s+|\d{{1,18}}|'(?:s|u|zf|zuf)\d{{1,9}}'|(?:s|u|zf|zuf)\d{{1,9}}\b|(?:{'|'.join(_SYMPY_NAMES.split())})\b"
    r"|//|[-+*/(),=<>]"
)
_MAX_EXPR = 1000
_MAX_TREESPEC = 100_000
_TREE_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
_FQN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def check_program(program: dict, path: Path) -> None:
    """Step 4, in place: refuse what is not plain data; drop the guards' code and node metadata."""
    try:
        gm = program["graph_module"]
        graph = gm["graph"]
        program["guards_code"] = []
        if graph.get("custom_obj_values"):
            raise ModelLoadError("it holds custom objects (TorchBind)")
        for node in graph["nodes"]:
            if not _allowed(node["target"]):
                raise ModelLoadError(f"its graph calls {str(node['target'])[:80]!r}, which kdcore does not run")
            kinds = {k for i in node["inputs"] for k in i["arg"]} | {k for o in node["outputs"] for k in o}
            if kinds - _ARG_KINDS:
                raise ModelLoadError(f"{node['target']} takes arguments of kind {sorted(kinds - _ARG_KINDS)}")
            stack = node.get("metadata", {}).get("nn_module_stack")
            node["metadata"] = {"nn_module_stack": stack} if isinstance(stack, str) else {}
        ends = {k for a in (*graph["inputs"], *graph["outputs"]) for k in a}
        if ends - _ARG_KINDS:
            raise ModelLoadError(f"its graph takes or returns values of kind {sorted(ends - _ARG_KINDS)}")
        for entry in gm["module_call_graph"]:
            for key in ("in_spec", "out_spec") if entry["signature"] else ():
                _check_treespec(entry["signature"][key])
        specs = gm["signature"]
        kinds_in = {k for s in specs["input_specs"] for k in s}
        kinds_out = {k for s in specs["output_specs"] for k in s}
        if kinds_in - _INPUTS or kinds_out - _OUTPUTS:
            raise ModelLoadError(f"its inputs/outputs include {sorted((kinds_in - _INPUTS) | (kinds_out - _OUTPUTS))}")
        for spec in specs["input_specs"]:
            for key in ("parameter_name", "buffer_name", "tensor_constant_name"):
                name = next(iter(spec.values())).get(key)
                if name is not None and not (isinstance(name, str) and _FQN.fullmatch(name)):
                    raise ModelLoadError(f"a state name {str(name)[:80]!r} is not a dotted Python name")
        _check_exprs(program)
    except ModelLoadError as e:
        raise ModelLoadError(f"{path.name} was refused: {e}") from None
    except (KeyError, TypeError, AttributeError, StopIteration) as e:
        raise ModelLoadError(f"{path.name} holds a malformed torch.export program ({short(e)})") from e


def _allowed(target: object) -> bool:
    """`torch.ops.aten.<op in OPS>.<overload>`, or one of OPS's `_operator` functions."""
    if not isinstance(target, str):
        return False
    packet, _, overload = target.rpartition(".")
    return target in OPS or (packet in OPS and packet.startswith("torch.ops.aten.") and overload.isidentifier())


def _check_treespec(text: object) -> None:
    """A pytree spec (torch's JSON of the inputs' and outputs' nesting) of tuples, lists and dicts.

    torch's `treespec_loads` imports the module a defaultdict's context names and, for any JSON
    object in a context, the module and attribute an `__enum__` entry names: neither may appear."""
    if not isinstance(text, str) or len(text) > _MAX_TREESPEC:
        raise ModelLoadError("its input/output structure (treespec) is not a short JSON string")
    try:
        protocol, todo = json.loads(text)
        todo = [todo]
        while todo:
            node = todo.pop()
            context = node["context"]
            if node["type"] not in _TREE_TYPES:
                raise ModelLoadError(f"its input/output structure holds a {str(node['type'])[:80]!r} node")
            if context is not None and not _plain(json.loads(context)):
                raise ModelLoadError("its input/output structure has a context holding JSON objects")
            todo.extend(node["children_spec"])
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise ModelLoadError(f"its input/output structure (treespec) is malformed ({short(e)})") from e
    if protocol != 1:
        raise ModelLoadError(f"its input/output structure uses treespec protocol {protocol!r}, not 1")


def _plain(value: object) -> bool:
    """JSON without objects (a dict's context is the list of its keys)."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            return False
        if isinstance(v, list):
            todo.extend(v)
    return True


def _check_exprs(program: dict) -> None:
    """Every `expr_str` (what torch passes to sympy.sympify, i.e. eval) in the small grammar."""
    todo = [program]
    while todo:
        obj = todo.pop()
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for key, value in items:
            if key == "expr_str" and not _is_expr(value):
                raise ModelLoadError(f"a symbolic size {str(value)[:80]!r} is not a plain size expression")
            if isinstance(value, (dict, list)):
                todo.append(value)


def _is_expr(text: object) -> bool:
    if not isinstance(text, str) or len(text) > _MAX_EXPR or "**" in text:
        return False
    pos = 0
    while pos < len(text):
        m = _EXPR_TOKEN.match(text, pos)
        if m is None or not m.group():
            return False
        pos = m.end()
    return True


def io_shapes(program: dict, path: Path) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) of the one image input and the class count of the one (B, classes) output."""
    try:
        gm = program["graph_module"]
        values = gm["graph"]["tensor_values"]
        users = [s["user_input"]["arg"] for s in gm["signature"]["input_specs"] if "user_input" in s]
        outs = [s["user_output"]["arg"] for s in gm["signature"]["output_specs"] if "user_output" in s]
        if len(users) != 1 or len(outs) != 1 or "as_tensor" not in users[0] or "as_tensor" not in outs[0]:
            raise ModelLoadError(f"it takes {len(users)} inputs and gives {len(outs)} outputs; a classifier takes one")
        x = values[users[0]["as_tensor"]["name"]]["sizes"]
        y = values[outs[0]["as_tensor"]["name"]]["sizes"]
        if len(x) != 4 or len(y) != 2:
            raise ModelLoadError(
                f"it maps a {len(x)}-d input to a {len(y)}-d output; expected (B, C, H, W) → (B, classes)"
            )
        shape = tuple(as_int(s, "the image size (C, H, W) must be fixed") for s in x[1:])
        return shape, as_int(y[1], "the number of classes must be fixed")
    except ModelLoadError as e:
        raise ModelLoadError(f"{path.name} is not an image classifier kdcore can audit: {e}") from None
    except (KeyError, TypeError, IndexError) as e:
        raise ModelLoadError(f"{path.name} holds a malformed torch.export program ({short(e)})") from e


def as_int(s: object, what: str = "sizes must be fixed") -> int:
    if not (isinstance(s, dict) and isinstance(s.get("as_int"), int)):
        raise ModelLoadError(what)
    return s["as_int"]


def short(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:200]}"
