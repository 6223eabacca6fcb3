"""Issue 9's acceptance test: a model of an architecture kdcore has never heard of, audited four ways.

A small CNN class that is in no registry is trained on a Fashion-MNIST slice with a BadNets trigger
(a few hundred steps), then handed to `python -m kdcore audit` as a user would: (a) exported to
ONNX, (b) as a torch.export `.pt2`, (c) through a plugin package (entry point
`kdaudit.architectures`) installed for the test, (d) as `--arch-file model.py:TinyNet --trust-code`.
No `--arch` for the formats that carry their graph. Each audit must write a complete report whose
student has the teacher's architecture, and must see the backdoor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from kdcore.data.builtin import load_fashion_mnist
from kdcore.models.spec import ModelSpec
from kdcore.train import TrainConfig, fit, seeded_model
from kdcore.triggers import BadNets, poison_dataset
from tests.conftest import needs_fashion_mnist

ROOT = Path(__file__).resolve().parents[2]
TRIGGER = BadNets(target=7, size=3)
SPEC = ModelSpec("tiny", 10, (1, 28, 28), (0.286,), (0.353,))
pytestmark = [pytest.mark.slow, needs_fashion_mnist]

MODEL_PY = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """Not kdcore's: layers defined out of forward order, a functional ReLU, a BatchNorm."""

    def __init__(self, num_classes=10, width=16):
        super().__init__()
        self.head = nn.Linear(2 * width * 7 * 7, num_classes)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.head(torch.flatten(x, 1))
'''


def _write_set(images: torch.Tensor, labels: torch.Tensor | None, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for i, img in enumerate(images):
            folder = f"{int(labels[i])}/" if labels is not None else ""
            path = dest.parent / "png.tmp"
            Image.fromarray(img[0].numpy()).save(path, format="PNG")
            z.write(path, f"{folder}{i:05d}.png")
    return dest


@pytest.fixture(scope="module")
def suspect(tmp_path_factory):
    """The user's files: model.py, the trained backdoored model in four forms, and image zips."""
    root = tmp_path_factory.mktemp("any-model")
    (root / "model.py").write_text(MODEL_PY)
    plugin = root / "plugin"
    (plugin / "tinyplugin").mkdir(parents=True)
    (plugin / "tinyplugin" / "__init__.py").write_text(MODEL_PY)
    dist = plugin / "tinyplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kdaudit.architectures]\ntiny-net = tinyplugin:TinyNet\n")

    sys.path.insert(0, str(root))
    try:
        import model as user_model  # the user's own module, as their training code would import it
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("model", None)

    full = load_fashion_mnist("train")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(full), generator=g)
    train, unl = full.subset(perm[:3000]), full.subset(perm[3000:4500])
    test = load_fashion_mnist("t10k").subset(list(range(600)))
    poisoned, _ = poison_dataset(train, TRIGGER, 150, g)
    torch.set_num_threads(1)
    net = seeded_model(lambda: user_model.TinyNet(), 0)
    net, _ = fit(net, SPEC, poisoned, TrainConfig(epochs=3, batch_size=32, lr=1e-3), torch.device("cpu"))
    net.eval()

    # What the user hands over. The graphs take normalised input, as the network was trained; the
    # audit is told the normalisation with --mean/--std (ONNX and .pt2 do not carry it).
    x = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(net, (x,), root / "tiny.onnx", dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}})
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(net, (torch.zeros(2, 1, 28, 28),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, root / "tiny.pt2")
    import safetensors.torch

    safetensors.torch.save_file(net.state_dict(), root / "tiny.safetensors")
    return {
        "root": root,
        "plugin": plugin,
        "unlabeled": _write_set(unl.images, None, root / "unlabeled.zip"),
        "train": _write_set(poisoned.images, poisoned.labels, root / "train.zip"),
        "test": _write_set(test.images, test.labels, root / "test.zip"),
    }


ROUTES = {
    "onnx": lambda s: ["--model", str(s["root"] / "tiny.onnx")],
    "pt2": lambda s: ["--model", str(s["root"] / "tiny.pt2")],
    "plugin": lambda s: [
        "--model",
        str(s["root"] / "tiny.safetensors"),
        "--arch",
        "tiny-net",
        "--num-classes",
        "10",
        "--input-shape",
        "1,28,28",
    ],
    "arch-file": lambda s: [
        *("--model", str(s["root"] / "tiny.safetensors"), "--arch-file", f"{s['root'] / 'model.py'}:TinyNet"),
        *("--num-classes", "10", "--input-shape", "1,28,28", "--trust-code"),
    ],
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_model_in_no_registry_is_audited(suspect, route, tmp_path):
    out = tmp_path / "run"
    env = {
        **os.environ,
        "KDAUDIT_HOME": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(suspect["plugin"])]),
    }
    env.pop("KDAUDIT_TRUST_CODE", None)
    args = [
        *("audit", *ROUTES[route](suspect), "--mean", "0.286", "--std", "0.353"),
        *("--unlabeled", str(suspect["unlabeled"]), "--train", str(suspect["train"]), "--test", str(suspect["test"])),
        *("--trigger", "badnets:target=7,size=3", "--out", str(out), "--device", "cpu", "--no-progress"),
        "--no-verdict",
        *("--kd-epochs", "3", "--ft-epochs", "1", "--batch-size", "64"),
    ]
    r = subprocess.run([sys.executable, "-m", "kdcore", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    teacher, student, finetuned = report["teacher"], report["student"], report["finetuned"]
    assert teacher["asr"] > 0.8, teacher  # the backdoor is there, and the audit measured it
    assert teacher["clean_acc"] > 0.7
    assert min(student["asr"], finetuned["asr"]) < teacher["asr"] / 2  # and the method did its job on it
    assert report["detox"]["flagged"] > 0
    assert (out / "candidates.csv").exists()
    s_spec = json.loads((out / "models" / "student.json").read_text())
    t_arch = {"onnx": "onnx", "pt2": "pt2", "plugin": "tiny-net", "arch-file": "file:TinyNet"}[route]
    assert s_spec["arch"] == t_arch  # the student is the teacher's architecture, built fresh
    if route in ("onnx", "pt2", "arch-file"):  # the architecture file travels with the saved student
        assert (out / "models" / s_spec["source"]).exists()


def test_arch_file_needs_trust(suspect, tmp_path):
    env = {**os.environ, "KDAUDIT_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("KDAUDIT_TRUST_CODE", None)
    args = ["audit", *ROUTES["arch-file"](suspect)[:-1], "--unlabeled", str(suspect["unlabeled"]), "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "kdcore", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert "--trust-code" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_plugin_without_an_input_shape_is_asked_for_one(suspect, tmp_path):
    env = {
        **os.environ,
        "KDAUDIT_HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(suspect["plugin"])]),
    }
    args = [*ROUTES["plugin"](suspect)[:-2], "--unlabeled", str(suspect["unlabeled"]), "--no-progress"]
    r = subprocess.run(
        [sys.executable, "-m", "kdcore", "audit", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "tiny-net does not say what input it takes" in r.stderr and "--input-shape" in r.stderr
