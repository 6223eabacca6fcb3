"""torch.export archives (.pt2): read through the sandbox, lifted into real layers, fresh students.

The models are exported here with `torch.export.export` + `torch.export.save`, as a user would:
kdcore's paper CNN and resnet18-small, and a small class that is in no registry (conv, BatchNorm,
dropout, LayerNorm and a bare parameter: every kind of thing the lifting pass handles).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcore import sandbox
from kdcore.errors import ModelLoadError
from kdcore.io import file_sha256
from kdcore.models import pt2file
from kdcore.models.layers import ROLES, choose_layer
from kdcore.models.loading import save_model
from kdcore.models.registry import build_model, student_spec
from kdcore.models.spec import ModelSpec


class TinyNet(nn.Module):
    """In no registry: conv → BN → ReLU → dropout → LayerNorm'd features × a bare scale → linear."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.norm = nn.LayerNorm(4 * 6 * 6)
        self.scale = nn.Parameter(torch.full((1,), 2.0))
        self.head = nn.Linear(4 * 6 * 6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.head(self.norm(x.flatten(1)) * self.scale)


class GroupNet(nn.Module):
    """conv → GroupNorm (2 groups) → ReLU → linear, as the model zoo's GroupNormNet."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4 * 6 * 6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.gn(self.conv(x))).flatten(1))


def _trained_bn(model: nn.Module) -> nn.Module:
    """Running statistics that are not the defaults, so eval and train mode differ."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *SHAPES[type(model).__name__]) * 3 + 1)
    return model.eval()


SHAPES = {"PaperCNN": (1, 12, 12), "ResNet18Small": (3, 16, 16), "TinyNet": (3, 6, 6), "GroupNet": (3, 6, 6)}
MODELS = {
    "paper-cnn": lambda: build_model(ModelSpec("paper-cnn", 10, SHAPES["PaperCNN"])),
    "resnet18-small": lambda: build_model(ModelSpec("resnet18-small", 10, SHAPES["ResNet18Small"])),
    "tiny": lambda: TinyNet(),
}


def export(model: nn.Module, path, batch: int | None = 2):
    """torch.export.save of `model` (eval); `batch=None` exports a fixed batch size of 1."""
    x = torch.zeros(batch or 1, *SHAPES[type(model).__name__])
    dynamic = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if batch else {}
    torch.export.save(torch.export.export(model.eval(), (x,), **dynamic), path)
    return path


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    """(original model, its .pt2 file)."""
    torch.manual_seed(0)
    model = _trained_bn(MODELS[request.param]())
    return model, export(model, tmp_path_factory.mktemp("pt2") / f"{request.param}.pt2")


def test_read_through_the_sandbox_equals_the_original(exported):
    original, path = exported
    model, spec = sandbox.load_model(path)
    shape = SHAPES[type(original).__name__]
    assert (spec.arch, spec.input_shape, spec.num_classes) == ("pt2", shape, original(torch.zeros(1, *shape)).shape[1])
    assert spec.source == str(path.resolve()) and spec.source_sha256 == file_sha256(path)
    assert sandbox.read_spec(path) == spec
    assert list(model.state_dict()) == list(original.state_dict())
    for batch in (1, 7):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-5)


def test_layer_choice_finds_the_same_layers(exported):
    original, path = exported
    model = pt2file.load_graph(path)
    spec = pt2file.read_spec(path)
    for role in ROLES:
        assert choose_layer(model, spec, role)[0] == choose_layer(original, spec, role)[0]


def test_train_and_eval_switch_batch_norm_and_dropout(tmp_path):
    torch.manual_seed(0)
    original = _trained_bn(TinyNet())
    model = pt2file.load_graph(export(original, tmp_path / "tiny.pt2"))
    assert isinstance(model.bn, nn.BatchNorm2d) and isinstance(model.drop, nn.Dropout)
    x = torch.randn(16, 3, 6, 6)
    before = model.bn.running_mean.clone()
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x))  # eval: running statistics, no dropout
        model.train()
        a, b = model(x), model(x)
    assert not torch.equal(a, b)  # dropout is on
    assert not torch.equal(model.bn.running_mean, before)  # batch statistics are tracked
    assert model.bn.num_batches_tracked.item() == original.bn.num_batches_tracked.item() + 2
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_a_student_is_fresh_deterministic_and_trains(tmp_path):
    torch.manual_seed(0)
    path = export(_trained_bn(TinyNet()), tmp_path / "tiny.pt2")
    spec = pt2file.read_spec(path)
    teacher = pt2file.load_graph(path)
    torch.manual_seed(1)
    student = build_model(spec)
    torch.manual_seed(1)
    again = build_model(spec)
    t, s = teacher.state_dict(), student.state_dict()
    assert list(s) == list(t) and all(s[k].shape == t[k].shape for k in t)
    assert isinstance(student.norm, nn.LayerNorm)
    for name in ("conv.weight", "head.weight", "scale"):  # the bare `scale` too (re-drawn by its Container)
        assert not torch.equal(s[name], t[name]), name
        assert torch.equal(s[name], again.state_dict()[name])
    assert student.training and torch.equal(s["bn.running_mean"], torch.zeros(4))

    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 5, (16,))
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(student(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_a_saved_student_loads_with_its_graph_beside_it(tmp_path):
    torch.manual_seed(0)
    path = export(_trained_bn(TinyNet()), tmp_path / "tiny.pt2")
    spec = pt2file.read_spec(path)
    student = build_model(spec).eval()
    out = tmp_path / "saved" / "student.safetensors"
    out.parent.mkdir()
    save_model(student, spec, out)
    assert (out.parent / "student.source.pt2").read_bytes() == path.read_bytes()
    path.unlink()  # the copy beside the weights is what the saved spec names
    loaded, got = sandbox.load_model(out)
    assert got.source == str((out.parent / "student.source.pt2").resolve())
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), student(x))


def test_a_fixed_batch_export_works_on_any_batch(tmp_path):
    torch.manual_seed(0)
    original = build_model(ModelSpec("paper-cnn", 10, (1, 12, 12))).eval()
    model = pt2file.load_graph(export(original, tmp_path / "fixed.pt2", batch=None))
    x = torch.randn(7, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x))


class BakedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.reshape(x.shape[0], -1))  # exported with batch 1: reshape(1, -1)


def test_a_graph_with_the_batch_size_baked_in_is_refused_with_the_export_command(tmp_path):
    model = BakedBatch().eval()
    path = tmp_path / "baked.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 6, 6),)), path)
    with pytest.raises(ModelLoadError, match="batch of 2") as e:
        sandbox.read_spec(path)
    assert "dynamic_shapes" in str(e.value)


def test_torch_never_unpickles_and_torch_export_load_is_never_called(tmp_path, monkeypatch):
    torch.manual_seed(0)
    path = export(TinyNet(), tmp_path / "tiny.pt2")
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: pytest.fail("torch.export.load was called"))
    pt2file.read_state_dict(path)
    assert calls and all(k.get("weights_only") is True for k in calls)  # only the sample inputs' check


def test_a_model_exported_in_train_mode_counts_batches_once(tmp_path):
    torch.manual_seed(0)
    original = TinyNet().train()
    path = tmp_path / "train.pt2"
    x = torch.randn(4, 3, 6, 6)
    torch.export.save(torch.export.export(original, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), path)
    model = pt2file.load_graph(path)
    original.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x))
        count = model.bn.num_batches_tracked.item()
        model.train()
        model(x)
        assert model.bn.num_batches_tracked.item() == count + 1
        model.eval()
        model(x)
        assert model.bn.num_batches_tracked.item() == count + 1


def test_grad_cam_on_the_lifted_graph_equals_the_original(tmp_path):
    from kdcore.explain.gradcam import gradcam

    torch.manual_seed(0)
    original = build_model(ModelSpec("paper-cnn", 10, (1, 12, 12))).eval()
    path = export(original, tmp_path / "cnn.pt2")
    images = torch.randint(0, 256, (3, 1, 12, 12), dtype=torch.uint8)
    spec = pt2file.read_spec(path)
    got = gradcam(pt2file.load_graph(path), spec, images, None)
    assert got.std() > 0
    assert abs(got - gradcam(original, spec, images, None)).max() < 1e-5


def test_a_program_decomposed_to_core_aten_still_has_its_convolutions(tmp_path):
    torch.manual_seed(0)
    original = build_model(ModelSpec("paper-cnn", 10, (1, 12, 12))).eval()
    ep = torch.export.export(original, (torch.zeros(2, 1, 12, 12),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(ep.run_decompositions(), tmp_path / "core.pt2")  # aten.convolution, addmm
    model = pt2file.load_graph(tmp_path / "core.pt2")
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)] == ["features.0", "features.2"]
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x))


def test_group_norm_is_lifted_and_a_fresh_student_starts_at_its_default_scale(tmp_path):
    """A GroupNorm's scale and shift were once left in a Container and re-drawn around 0 (std 0.02), so
    the zoo's GroupNorm students learnt their teachers on 31-59 % of images (measured)."""
    torch.manual_seed(0)
    original = GroupNet().eval()
    with torch.no_grad():
        original.gn.weight.uniform_(0.5, 2.0)
        original.gn.bias.uniform_(-1.0, 1.0)
    teacher, spec = sandbox.load_model(export(original, tmp_path / "gn.pt2"))
    assert isinstance(teacher.gn, nn.GroupNorm) and teacher.gn.num_groups == 2
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), original(x), rtol=1e-5, atol=1e-5)
    student = build_model(student_spec(spec))
    assert isinstance(student.gn, nn.GroupNorm)
    assert student.gn.weight.eq(1).all() and student.gn.bias.eq(0).all()  # PyTorch's own start
    assert not any(isinstance(m, nn.BatchNorm2d) for m in student.modules())  # it has its normalisation
