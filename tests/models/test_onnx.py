"""ONNX models (kdcore.models.onnxfile): tiny models exported by both of PyTorch's exporters, read
through the sandbox, compared with the original, rebuilt as fresh students, saved and reloaded;
and every refusal with a file crafted by onnx.helper. The helpers here are shared by
tests/hostile/test_onnx_hostile.py and tests/defenses/test_onnx_defenses.py."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from kdcore import sandbox
from kdcore.errors import ModelLoadError
from kdcore.models import onnxfile
from kdcore.models.layers import ROLES, choose_layer, layer_report
from kdcore.models.loading import load_model, read_spec, save_model
from kdcore.models.paper import PaperCNN
from kdcore.models.registry import build_model, student_spec
from kdcore.models.resnet import ResNet18Small
from kdcore.models.spec import ModelSpec

CNN_SHAPE, RES_SHAPE = (1, 12, 12), (3, 16, 16)
BN_RANGES = ((0.5, 1.5), (-0.5, 0.5), (-0.5, 0.5), (0.5, 2.0))  # weight, bias, running mean and variance


def export(
    model: nn.Module,
    shape: tuple[int, int, int],
    path: Path,
    *,
    dynamo: bool = False,
    dynamic_hw: bool = False,
    keep_bn: bool = False,
    batch: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """`torch.onnx.export` as a user would call it: the TorchScript exporter (`dynamo=False`,
    BatchNorm kept with `keep_bn`) or the default dynamo one, a dynamic batch unless `batch=False`."""
    x = torch.zeros(2, *shape)
    model = model.eval()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {0: torch.export.Dim("batch")} if batch else {}
            if dynamic_hw:
                dims.update({2: torch.export.Dim("h", min=5, max=64), 3: torch.export.Dim("w", min=5, max=64)})
            shapes = (dims,) if dims else None
            torch.onnx.export(model, (x,), str(path), dynamic_shapes=shapes, external_data=False)
        else:
            axes = ({0: "batch"} if batch else {}) | ({2: "h", 3: "w"} if dynamic_hw else {})
            extra = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False} if keep_bn else {}
            torch.onnx.export(
                model, (x,), str(path), dynamo=False, input_names=["input"], dynamic_axes={"input": axes}, **extra
            )
    if metadata:
        proto = onnx.load(str(path))
        for k, v in metadata.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, str(path))
    return path


def paper_cnn(seed: int = 0, shape: tuple[int, int, int] = CNN_SHAPE) -> nn.Module:
    torch.manual_seed(seed)
    return PaperCNN(10, shape).eval()


def crafted(
    path: Path,
    nodes: list | None = None,
    inits: list | None = None,
    inputs: list | None = None,
    outputs: list | None = None,
    opset: int = 17,
    check: bool = True,
) -> Path:
    """A tiny ONNX classifier (N, 1, 4, 4) → Flatten → Gemm → (N, 3), or the parts given instead."""
    rng = np.random.default_rng(0)
    nodes = (
        nodes
        if nodes is not None
        else [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1),
        ]
    )
    inits = (
        inits
        if inits is not None
        else [
            numpy_helper.from_array(rng.standard_normal((3, 16)).astype(np.float32), "W"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b"),
        ]
    )
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    d = tmp_path_factory.mktemp("onnx")
    cnn, res = paper_cnn(), ResNet18Small(10, RES_SHAPE).eval()
    with torch.no_grad():  # BatchNorm statistics that are not (0, 1), so folding them matters
        for m in res.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, (lo, hi) in zip((m.weight, m.bias, m.running_mean, m.running_var), BN_RANGES, strict=True):
                    t.uniform_(lo, hi)
    return {
        "cnn-torchscript": (cnn, export(cnn, CNN_SHAPE, d / "cnn_ts.onnx")),
        "cnn-dynamo": (cnn, export(cnn, CNN_SHAPE, d / "cnn_dynamo.onnx", dynamo=True)),
        "resnet-torchscript-bn": (res, export(res, RES_SHAPE, d / "res_bn.onnx", keep_bn=True)),
        "resnet-dynamo": (res, export(res, RES_SHAPE, d / "res_dynamo.onnx", dynamo=True)),
    }


@pytest.mark.parametrize("kind", ["cnn-torchscript", "cnn-dynamo", "resnet-torchscript-bn", "resnet-dynamo"])
def test_an_export_reads_through_the_sandbox_and_computes_the_original(kind, exports):
    original, path = exports[kind]
    spec = sandbox.read_spec(path)
    shape = RES_SHAPE if kind.startswith("resnet") else CNN_SHAPE
    assert (spec.arch, spec.num_classes, spec.input_shape) == ("onnx", 10, shape)
    assert (spec.mean, spec.std) == ((0.0,) * shape[0], (1.0,) * shape[0])
    assert Path(spec.source) == path.resolve() and len(spec.source_sha256) == 64
    teacher, got = sandbox.load_model(path)
    assert got == spec
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(teacher(x), original(x), atol=1e-5, rtol=1e-5)


def test_batchnorm_stays_a_layer_and_every_parameter_is_reinitialised(exports):
    _, path = exports["resnet-torchscript-bn"]
    teacher, spec = load_model(path)
    bns = [n for n, m in teacher.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 20  # 17 in the blocks' main paths + 3 shortcuts
    torch.manual_seed(1)
    student = build_model(spec)
    assert student.training
    assert student.state_dict().keys() == teacher.state_dict().keys()
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    for name, p in s_params.items():
        assert p.shape == t_params[name].shape
        assert not torch.equal(p, t_params[name]), f"{name} kept the teacher's values"
    bn = dict(student.named_modules())[bns[0]]
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)) and bn.running_var.eq(1).all()
    # trainable: a loss reaches every parameter, and a train-mode pass updates BatchNorm's statistics
    student(torch.rand(4, *RES_SHAPE)).logsumexp(1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_a_student_of_a_graph_whose_batchnorm_was_folded_gets_batchnorm_back(exports, tmp_path):
    """The exporter folds BatchNorm into the convolutions; a fresh student of that graph has no
    normalisation at all, and the zoo's MobileNet students learnt nothing (10 % of images agreed)."""
    _, path = exports["resnet-dynamo"]
    teacher, spec = load_model(path)
    convs = [n for n, m in teacher.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs and not any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())  # folded
    s_spec = student_spec(spec)
    assert build_model(spec).state_dict().keys() == teacher.state_dict().keys()  # the teacher's own graph
    student = build_model(s_spec)
    layers = dict(student.named_modules())
    for name in convs:  # each convolution keeps its path (a layer chosen on the teacher), its BatchNorm after it
        assert isinstance(layers[name], nn.Conv2d) and isinstance(layers[f"{name}.bn"], nn.BatchNorm2d)
    for role in ROLES:
        assert choose_layer(student, s_spec, role)[0] == choose_layer(teacher, spec, role)[0]
    student(torch.rand(4, *RES_SHAPE)).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in student.parameters())
    out = tmp_path / "student.safetensors"  # as the pipeline saves and reloads it
    save_model(student.eval(), s_spec, out)
    again, _ = load_model(out, s_spec)
    x = torch.rand(3, *RES_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(again(x), student(x))
    _, with_bn = exports["resnet-torchscript-bn"]  # a graph that kept its BatchNorm is left as it is
    t2, spec2 = load_model(with_bn)
    assert build_model(student_spec(spec2)).state_dict().keys() == t2.state_dict().keys()


@pytest.mark.parametrize("kind", ["cnn-torchscript", "cnn-dynamo", "resnet-dynamo"])
def test_build_gives_a_fresh_student_of_the_same_graph(kind, exports):
    _, path = exports[kind]
    teacher, spec = load_model(path)
    torch.manual_seed(7)  # not the teacher's seed: see the next test
    a = build_model(spec)
    torch.manual_seed(7)
    b = build_model(spec)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), f"{name}: the same seed gives the same student"
    assert {n: p.shape for n, p in a.named_parameters()} == {n: p.shape for n, p in teacher.named_parameters()}
    assert not any(torch.equal(p, q) for p, q in zip(a.parameters(), teacher.parameters(), strict=True))
    assert a(torch.rand(3, *spec.input_shape)).shape == (3, 10)


@pytest.mark.parametrize("kind", ["cnn-torchscript", "cnn-dynamo"])
def test_reinitialising_draws_what_pytorchs_own_constructors_draw(kind, exports):
    """Oracle: layers reset in the order PaperCNN creates them, so one seed gives the native model."""
    spec = read_spec(exports[kind][1])
    torch.manual_seed(0)
    student = build_model(spec)
    native = paper_cnn(seed=0)
    for p, q in zip(student.parameters(), native.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_saved_student_reloads_with_its_graph_copied_beside(exports, tmp_path):
    _, path = exports["cnn-dynamo"]
    spec = read_spec(path)
    student = build_model(spec).eval()
    saved = save_model(student, spec, tmp_path / "run" / "student.safetensors")
    assert (tmp_path / "run" / "student.source.onnx").read_bytes() == path.read_bytes()
    moved = tmp_path / "elsewhere"
    (tmp_path / "run").rename(moved)  # the spec names its graph relative to the model file
    again, got = sandbox.load_model(moved / saved.name)
    assert got.arch == "onnx" and Path(got.source) == (moved / "student.source.onnx").resolve()
    x = torch.rand(4, *CNN_SHAPE)
    with torch.inference_mode():
        torch.testing.assert_close(again(x), student(x))


def test_the_kdcore_spec_in_the_metadata_gives_normalisation_and_class_names(tmp_path):
    stored = ModelSpec("paper-cnn", 10, CNN_SHAPE, (0.3,), (0.4,), tuple("abcdefghij"), layers={"last_conv": "x"})
    path = export(paper_cnn(), CNN_SHAPE, tmp_path / "m.onnx", metadata={"kdcore_spec": stored.to_json()})
    spec = read_spec(path)
    assert (spec.arch, spec.mean, spec.std, spec.class_names) == ("onnx", (0.3,), (0.4,), tuple("abcdefghij"))
    bad = export(paper_cnn(), CNN_SHAPE, tmp_path / "bad.onnx", metadata={"kdcore_spec": "{not json"})
    with pytest.raises(ModelLoadError, match=r"spec in the metadata of bad\.onnx is not valid"):
        read_spec(bad)


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_dynamic_spatial_size_needs_the_input_shape(dynamo, tmp_path):
    torch.manual_seed(0)  # global pooling: any H and W
    original = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    path = export(original, CNN_SHAPE, tmp_path / "m.onnx", dynamo=dynamo, dynamic_hw=True)
    with pytest.raises(
        ModelLoadError, match=r"input shape \(1, \?, \?\).*give the input shape \(C,H,W\).*--input-shape"
    ):
        sandbox.read_spec(path)
    spec = sandbox.read_spec(path, input_shape=CNN_SHAPE)
    assert spec.input_shape == CNN_SHAPE
    teacher, _ = sandbox.load_model(path, spec)
    x = torch.rand(2, *CNN_SHAPE)
    with torch.inference_mode():
        torch.testing.assert_close(teacher(x), original(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelLoadError, match="input shape given is"):
        read_spec(path, input_shape=(3, 12, 12))


def test_a_fixed_batch_size_is_refused_with_how_to_export(tmp_path):
    path = export(paper_cnn(), CNN_SHAPE, tmp_path / "b1.onnx", dynamo=True, batch=False)
    with pytest.raises(ModelLoadError, match=r"exported for batch size 2 only.*Dim\('batch'\)"):
        read_spec(path)


def test_layer_choice_finds_the_converted_layers(exports):
    _, path = exports["resnet-torchscript-bn"]
    model, spec = load_model(path)
    report = layer_report(model, spec)
    assert report["problems"] == {}
    assert report["last_conv"].endswith("/conv2/Conv") and "layer4" in report["last_conv"]
    assert report["conv_activation"].endswith("/bn2/BatchNormalization")
    assert report["penultimate"] == report["linear"][-1]
    name, module = choose_layer(model, spec.replace(layers={"last_conv": report["conv"][0]}), "last_conv")
    assert name == report["conv"][0] and isinstance(module, nn.Conv2d)


def test_a_crafted_graph_converts(tmp_path):
    spec = read_spec(crafted(tmp_path / "ok.onnx"))
    assert (spec.num_classes, spec.input_shape) == (3, (1, 4, 4))


def _input(name="x", dtype=TensorProto.FLOAT, dims=("N", 1, 4, 4)):
    return helper.make_tensor_value_info(name, dtype, list(dims))


def _external_weight() -> TensorProto:
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[3, 16])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="/etc/passwd")
    return w


REFUSED = {
    "external data": (dict(inits=[_external_weight(), numpy_helper.from_array(np.zeros(3, np.float32), "b")],
                           check=False), "external file.*external_data=False"),
    "custom domain": (dict(nodes=[helper.make_node("Flatten", ["x"], ["f"]),
                                  helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1, domain="com.vendor")],
                           check=False), r"outside the ONNX standard \(com.vendor.Gemm\)"),
    "unsupported op": (dict(nodes=[helper.make_node("Flatten", ["x"], ["f"]),
                                   helper.make_node("Gemm", ["f", "W", "b"], ["g"], transB=1),
                                   helper.make_node("Hardmax", ["g"], ["y"])]), "cannot be converted.*Hardmax"),
    "two inputs": (dict(inputs=[_input(), _input("z")]), "takes 2 inputs"),
    "int input": (dict(inputs=[_input(dtype=TensorProto.INT64)], check=False), "int64 input"),
    "output of rank 4": (dict(nodes=[helper.make_node("Relu", ["x"], ["y"])],
                              outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 4, 4])]),
                         "rank 4"),
    "output of one value per image": (
        dict(nodes=[helper.make_node("Flatten", ["x"], ["f"]),
                    helper.make_node("ReduceSum", ["f"], ["y"], keepdims=0)],
             outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])], check=False),
        r"returns \(\) for 4 images; kdcore needs logits \(B, classes\)"),
    "integer weights": (dict(inits=[numpy_helper.from_array(np.ones((3, 16), np.int64), "W"),
                                    numpy_helper.from_array(np.zeros(3, np.int64), "b")], check=False),
                        "not floating point|onnxruntime cannot run"),
    "matmul weights on the left of images": (  # on the right, X @ M is a dense layer (nn.Linear) on any rank
        dict(nodes=[helper.make_node("MatMul", ["M", "x"], ["m"]), helper.make_node("Flatten", ["m"], ["f"]),
                    helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)],
             inits=[numpy_helper.from_array(np.ones((4, 4), np.float32), "M"),
                    numpy_helper.from_array(np.ones((3, 16), np.float32), "W"),
                    numpy_helper.from_array(np.zeros(3, np.float32), "b")]),
        "convert to constants.*Gemm"),
    "two outputs": (dict(nodes=[helper.make_node("Flatten", ["x"], ["f"]),
                                helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)],
                         outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
                                  helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 16])]),
                    "2 outputs"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_every_refusal_is_a_clear_model_load_error(case, tmp_path):
    kwargs, message = REFUSED[case]
    path = crafted(tmp_path / "m.onnx", **kwargs)
    with pytest.raises(ModelLoadError, match=message) as e:
        read_spec(path)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


@pytest.mark.parametrize("bias", [True, False])
def test_a_dense_layer_written_as_matmul_and_add_becomes_a_linear_layer(bias, tmp_path):
    """tf2onnx writes Keras' Dense, and skl2onnx an MLP, as MatMul + Add."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["m" if bias else "y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "W")]
    if bias:
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
        inits.append(numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"))
    path = crafted(tmp_path / "dense.onnx", nodes=nodes, inits=inits)
    teacher, spec = load_model(path)  # the fidelity check against onnxruntime passed
    linear = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    assert len(linear) == 1 and (linear[0].bias is not None) == bias
    x = torch.rand(2, 1, 4, 4)
    expected = x.flatten(1) @ torch.tensor(numpy_helper.to_array(inits[0]))
    if bias:
        expected += torch.tensor(numpy_helper.to_array(inits[1]))
    with torch.inference_mode():
        torch.testing.assert_close(teacher(x), expected)
    student = build_model(spec)  # W and b are a layer's parameters now: a fresh student resets them
    for (name, p), q in zip(student.named_parameters(), teacher.parameters(), strict=True):
        assert not torch.equal(p, q), name


def test_too_many_tensor_elements_are_refused(tmp_path, set_limits):
    path = crafted(tmp_path / "m.onnx")
    set_limits(max_tensor_elements=50)  # the crafted model has 3 × 16 + 3 = 51
    with pytest.raises(ModelLoadError, match=r"at least 51 tensor elements.*max_tensor_elements"):
        read_spec(path)


def test_the_file_size_limit_holds(tmp_path, set_limits):
    path = crafted(tmp_path / "m.onnx")
    set_limits(max_model_file_bytes=100)
    with pytest.raises(ModelLoadError, match="max_model_file_bytes"):
        onnxfile.read_state_dict(path)


def test_a_changed_source_file_is_not_built(exports, tmp_path):
    _, path = exports["cnn-torchscript"]
    copy = tmp_path / "m.onnx"
    copy.write_bytes(path.read_bytes())
    spec = read_spec(copy)
    copy.write_bytes(crafted(tmp_path / "other.onnx").read_bytes())
    with pytest.raises(Exception, match="changed since this model was read"):
        build_model(spec)


@pytest.mark.parametrize("kind", ["resnet-torchscript-bn", "resnet-dynamo", "cnn-dynamo"])
def test_explain_and_channel_masking_run_on_a_converted_graph(kind, exports):
    from kdcore.defenses.channels import channel_layer, masked_channels, zero_channels
    from kdcore.explain.activations import activation_norms, channel_linf
    from kdcore.explain.gradcam import gradcam

    model, spec = load_model(exports[kind][1])
    images = torch.randint(
        0, 256, (3, *spec.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    cams = gradcam(model, spec, images, None)
    assert cams.shape == (3, *spec.input_shape[1:]) and 0 <= cams.min() and cams.max() <= 1 and cams.max() > 0
    assert activation_norms(model, spec, images, relu=True).l2.shape == (3,)
    layer = channel_layer(model, spec)
    assert isinstance(layer.conv, nn.Conv2d) and (layer.norm is not None) == kind.endswith("-bn")
    zero_channels(layer, [0, 5])
    assert masked_channels(layer) == [0, 5]
    linf = channel_linf(model, spec, images, layer.activation_layer, relu=True)  # (N, C)
    assert (linf[:, [0, 5]] == 0).all() and (linf[:, 1] > 0).any()


class _VendorCNN(nn.Module):
    """A small CNN in no registry, as another toolkit would define it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3))
        self.head = nn.Linear(32 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(torch.max_pool2d(torch.relu(self.body(x)), 2), 1))  # (B, 32·6·6) → (B, 10)


def test_an_onnx_export_of_an_unregistered_cnn_is_audited_through_the_cli(tmp_path):
    """Issue 9's done-when (a): trained a few hundred steps on Fashion-MNIST with a BadNets trigger,
    exported with PyTorch's default exporter, audited by `kdcore audit` with no --arch."""
    import json
    import os
    import subprocess
    import sys

    from kdcore.data.builtin import load_fashion_mnist
    from kdcore.train import TrainConfig, fit
    from kdcore.triggers import BadNets, poison_dataset
    from tests.conftest import _write_png, _zip_dir

    g = torch.Generator().manual_seed(0)
    data = load_fashion_mnist("train")
    perm = torch.randperm(len(data), generator=g)[:4000]
    train, unl, test = data.subset(perm[:2500]), data.subset(perm[2500:3500]), data.subset(perm[3500:])
    trigger = BadNets(target=7, size=3, margin=1)
    poisoned, _ = poison_dataset(train, trigger, 300, g)
    spec = ModelSpec("vendor-cnn", 10, (1, 28, 28), (0.286,), (0.353,))
    torch.manual_seed(0)
    teacher, _ = fit(_VendorCNN(), spec, poisoned, TrainConfig(epochs=8, batch_size=64), torch.device("cpu"))
    path = export(teacher, (1, 28, 28), tmp_path / "vendor.onnx", dynamo=True, metadata={"kdcore_spec": spec.to_json()})
    for name, s in (("train", poisoned), ("unl", unl), ("test", test)):
        for i in range(len(s)):
            label = "" if name == "unl" else f"/{int(s.labels[i])}"
            _write_png(tmp_path / name / f"{label.strip('/') or 'all'}" / f"{i:05d}.png", s.images[i])
    zips = {n: _zip_dir(tmp_path / n, tmp_path / f"{n}.zip", n) for n in ("train", "unl", "test")}
    out = tmp_path / "audit"
    args = ["audit", "--model", str(path), "--unlabeled", str(zips["unl"]), "--train", str(zips["train"])]
    args += ["--test", str(zips["test"]), "--trigger", "badnets:target=7,size=3,margin=1", "--out", str(out)]
    args += ["--no-verdict"]
    args += ["--device", "cpu", "--kd-epochs", "3", "--no-progress"]
    env = {**os.environ, "KDAUDIT_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "kdcore", *args], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for key in ("teacher", "student", "finetuned", "detox", "config"):
        assert key in report, key
    assert report["teacher"]["asr"] > 0.8 and report["teacher"]["clean_acc"] > 0.6
    assert (out / "models").is_dir() and any((out / "models").glob("*.source.onnx"))
