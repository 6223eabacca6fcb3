"""The ONNX operators kdcore adds to onnx2torch (kdcore.models.onnxops), and those of modern
architectures onnx2torch converts as they are: each in a tiny real graph (PyTorch's default exporter,
or onnx.helper for what that exporter does not write), read by kdcore's reader, compared with
onnxruntime on random images, and rebuilt as a fresh student. Then a ConvNeXt-style GELU network,
exported with the defaults, checked in the sandbox and audited."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from kdcore import sandbox
from kdcore.config import from_dict
from kdcore.data.folders import load_labeled
from kdcore.models.loading import load_model, read_spec
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.runs.audit import run_audit
from kdcore.runs.configs import AuditConfig
from kdcore.train import TrainConfig, fit, seeded_model
from tests.conftest import audit_config
from tests.models.test_onnx import crafted, export

SHAPE = (1, 8, 8)


class Act(nn.Module):
    """Conv → an activation → mean pool → Linear: how an activation meets the exporter in a CNN."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv, self.act, self.head = nn.Conv2d(1, 6, 3, padding=1), act, nn.Linear(6, 10)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean((2, 3)))


class Tokens(nn.Module):
    """A ViT / MLP-Mixer block: patches as tokens, LayerNorm, nn.Linear on (B, tokens, C), attention."""

    def __init__(self):
        super().__init__()
        self.patch, self.norm = nn.Conv2d(1, 16, 4, 4), nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, 4, 16)
        y = self.norm(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        q = x.view(x.shape[0], 4, 2, 8).transpose(1, 2)  # (B, heads, tokens, 8)
        x = x + F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(x.shape)
        return self.head((x + self.mlp(self.norm(x))).mean(1))


class ConvNeXtBlock(nn.Module):
    """A ConvNeXt stage: depthwise conv, LayerNorm and an MLP with GELU channels-last, a residual."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 2, 2)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)  # (B, C, H/2, W/2)
        y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1)))  # (B, H, W, C)
        return self.head((x + y.permute(0, 3, 1, 2)).mean((2, 3)))


class SqueezeExcite(nn.Module):
    """A MobileNetV3 block: HardSwish, a squeeze-and-excite gate through HardSigmoid."""

    def __init__(self):
        super().__init__()
        self.conv, self.se1, self.se2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = F.hardswish(self.conv(x))
        x = x * F.hardsigmoid(self.se2(F.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        return self.head(x.mean((2, 3)))


def _group_norm(path: Path, opset: int = 21) -> Path:
    """x (N, 1, 4, 4) → Conv (4 channels) → GroupNormalization (2 groups) → Flatten → Gemm: torch's
    exporter writes InstanceNormalization instead, other exporters this operator."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "K"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "s"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, 4).astype(np.float32), "t"),
        numpy_helper.from_array(rng.standard_normal((3, 64)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GroupNormalization", ["c", "s", "t"], ["g"], num_groups=2, epsilon=1e-3),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1),
    ]
    return crafted(path, nodes=nodes, inits=inits, opset=opset)


def _gelu_at_20(path: Path) -> Path:
    """Gelu in a graph that converts at its own opset 20 (no operator to bring down)."""
    nodes = [helper.make_node("Gelu", ["x"], ["a"]), helper.make_node("Flatten", ["a"], ["f"])]
    nodes.append(helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1))
    return crafted(path, nodes=nodes, opset=20)


def _erf_gelu(path: Path) -> Path:
    """The TorchScript exporter writes GELU as Erf arithmetic below opset 20."""
    x = torch.zeros(2, *SHAPE)
    torch.onnx.export(_randomised(Act(nn.GELU())), (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    return path


def _default(make) -> object:
    """Writes the model `make()` builds, its parameters randomised, with `torch.onnx.export`'s defaults."""
    return lambda path: export(_randomised(make()), SHAPE, path, dynamo=True)


def _randomised(model: nn.Module) -> nn.Module:
    """Every parameter moved off its initial value (a LayerNorm's ones would equal a fresh student's)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.rand_like(p) - 0.5)
    return model.eval()


# name → (writes the file, the type of a layer the conversion must give, its GELU approximation)
CASES = {
    "Gelu, onnx.helper at opset 20": (_gelu_at_20, "GELU", "none"),
    "Gelu, default export": (_default(lambda: Act(nn.GELU())), "GELU", "none"),
    "Gelu tanh, default export": (_default(lambda: Act(nn.GELU("tanh"))), "GELU", "tanh"),
    "Mish, default export": (_default(lambda: Act(nn.Mish())), "Mish", None),
    "GroupNormalization 21": (_group_norm, "GroupNorm", None),
    "dense layers on tokens, attention, LayerNorm (ViT)": (_default(Tokens), "Linear", None),
    "dense layers channels-last, LayerNorm, GELU (ConvNeXt)": (_default(ConvNeXtBlock), "LayerNorm", None),
    # converted by onnx2torch as they are; here so a change of either library shows
    "HardSwish, HardSigmoid (MobileNetV3)": (_default(SqueezeExcite), "Hardswish", None),
    "Erf GELU, TorchScript exporter at opset 17": (_erf_gelu, "OnnxErf", None),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_an_operator_converts_to_what_onnxruntime_computes(case, tmp_path):
    write, layer, approximate = CASES[case]
    torch.manual_seed(0)
    path = write(tmp_path / "m.onnx")
    teacher, spec = load_model(path)  # kdcore's reader: checks, converts, passes its own fidelity check
    x = torch.rand((6, *spec.input_shape), generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ref,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        got = teacher(x)
    ref = torch.from_numpy(ref)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    found = [m for m in teacher.modules() if type(m).__name__ == layer]
    assert found, f"no {layer} in {sorted({type(m).__name__ for m in teacher.modules()})}"
    if approximate is not None:
        assert {m.approximate for m in found} == {approximate}
    student = build_model(spec)  # every parameter is a layer's, re-initialised
    taught = dict(teacher.named_parameters())
    assert taught and set(dict(student.named_parameters())) == set(taught)
    for name, p in student.named_parameters():
        assert not torch.equal(p, taught[name]), name


def test_dense_layers_on_any_rank_are_layers_a_student_learns(tmp_path):
    """A ViT's nn.Linear on (B, tokens, C) exports as MatMul + Add on a constant: converted as such,
    its weight would be a buffer no student can re-initialise or learn."""
    path = export(Tokens(), SHAPE, tmp_path / "vit.onnx", dynamo=True)
    teacher, spec = load_model(path)
    linear = {n: m for n, m in teacher.named_modules() if isinstance(m, nn.Linear)}
    assert len(linear) == 5  # attention's in- and out-projection, the MLP's two, the head (Gemm)
    assert all(not n.startswith("kdcore/") for n in linear), list(linear)  # named after the file's nodes
    student = build_model(spec).train()
    loss = student(torch.rand(4, *SHAPE)).logsumexp(1).sum()
    loss.backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in student.modules()
               if isinstance(m, nn.Linear))  # fmt: skip


def test_a_graph_brought_down_keeps_gelu_and_its_layer_names(tmp_path):
    """ReduceMean at opset 18 converts only from opset 13, Gelu exists only from opset 20: the graph is
    brought down with Gelu kept aside; its layers still carry the names of the file's nodes."""
    path = export(Act(nn.GELU()), SHAPE, tmp_path / "act.onnx", dynamo=True)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 20 and "ReduceMean" in {n.op_type for n in proto.graph.node}
    teacher, _ = load_model(path)
    names = {n.name.replace(".", "/") for n in proto.graph.node}
    assert set(dict(teacher.named_children())) - {"initializers"} <= names


@pytest.fixture(scope="module")
def gelu_teacher(tmp_path_factory, digits, digits_files):
    """A ConvNeXt-style GELU network trained on the digits training set (60 poisons included),
    exported with `torch.onnx.export`'s defaults and the kdcore spec in its metadata."""
    spec = ModelSpec("convnext-tiny", 10, SHAPE, (0.3,), (0.4,))
    train = load_labeled(digits_files["train"], SHAPE)
    net = seeded_model(ConvNeXtBlock, 0)
    net, _ = fit(net, spec, train, TrainConfig(epochs=15, batch_size=50, lr=3e-3), torch.device("cpu"))
    path = tmp_path_factory.mktemp("gelu") / "convnext.onnx"
    return export(net.eval(), SHAPE, path, dynamo=True, metadata={"kdcore_spec": spec.to_json()})


def test_an_onnx_export_of_a_gelu_network_is_audited(gelu_teacher, digits_files, tmp_path):
    """Issue 20's done-when: refused before (`uses operators that cannot be converted to PyTorch
    (onnx2torch 1.5.15): Gelu`); now checked in the sandbox and audited, its student trained fresh."""
    assert "Gelu" in {n.op_type for n in onnx.load(str(gelu_teacher)).graph.node}
    spec, params, layers = sandbox.check_model(gelu_teacher)
    assert spec.arch == "onnx" and spec.input_shape == SHAPE and params > 0 and layers
    assert read_spec(gelu_teacher).mean == (0.3,)
    cfg = audit_config({**digits_files, "model": gelu_teacher}, kd_epochs=30, ft_epochs=1)
    cfg["kd"]["distill"]["lr"] = 3e-3  # a student from scratch, in a few hundred steps
    report = run_audit(from_dict(AuditConfig, cfg), tmp_path / "run")
    assert report["teacher"]["clean_acc"] > 0.8
    assert report["student"]["clean_acc"] > 0.35  # distilled from scratch (chance: 0.1)
    assert (tmp_path / "run" / "report.json").is_file()
    student, s_spec = load_model(tmp_path / "run" / "models" / "student.safetensors")
    teacher, _ = load_model(gelu_teacher)
    assert s_spec.arch == "onnx" and any(isinstance(m, nn.GELU) for m in student.modules())
    t = dict(teacher.named_parameters())
    assert all(not torch.allclose(p, t[n]) for n, p in student.named_parameters())
