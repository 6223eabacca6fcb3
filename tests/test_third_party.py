"""kdcore.third_party: an audit writes nothing outside its run and data directories, whatever the model's
format; onnxruntime is loaded only for an ONNX model and never with its telemetry on; a sandboxed
child's homes and caches are inside its temporary folder.

Each audit runs as a user runs it (`python -m kdcore audit`) with HOME and TMPDIR pointed at empty
folders and none of the variables kdcore sets (so the test sees what kdcore itself does)."""

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

from kdcore.data.builtin import load_digits
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.third_party import sandbox_env
from kdcore.train import seeded_model

ROOT = Path(__file__).resolve().parents[1]
SPEC = ModelSpec("paper-cnn", 10, (1, 8, 8), (0.3,), (0.4,))
SET_BY_KDCORE = set(sandbox_env(Path("/"))) | {"KDAUDIT_HOME"}  # the variables a user's shell does not set
MODEL_FLAGS = {
    "pt": ["--arch", "paper-cnn", "--num-classes", "10", "--input-shape", "1,8,8"],
    "onnx": ["--mean", "0.3", "--std", "0.4"],
    "pt2": ["--mean", "0.3", "--std", "0.4"],
}


def _zip(images: torch.Tensor, labels: torch.Tensor | None, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for i, img in enumerate(images):
            png = dest.parent / "one.png"
            Image.fromarray(img[0].numpy()).save(png)
            z.write(png, (f"{int(labels[i])}/" if labels is not None else "") + f"{i:04d}.png")
    png.unlink()
    return dest


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """An (untrained) paper-cnn on digits as .pt, .onnx and .pt2, unlabelled images and a test set."""
    root = tmp_path_factory.mktemp("inputs")
    net = seeded_model(lambda: build_model(SPEC), 0).eval()
    torch.save(net.state_dict(), root / "model.pt")
    x = torch.zeros(2, 1, 8, 8)
    torch.onnx.export(net, (x,), root / "model.onnx", dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}})
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: batch},)), root / "model.pt2")
    digits = load_digits()
    _zip(digits.images[:200], None, root / "unlabeled.zip")
    _zip(digits.images[200:300], digits.labels[200:300], root / "test.zip")
    return root


def _as_a_user(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """The environment of a user's shell with an empty HOME and TMPDIR (returned) and a data directory."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in SET_BY_KDCORE}
    env.update(HOME=str(home), TMPDIR=str(tmp), KDAUDIT_HOME=str(tmp_path / "data"), PYTHONPATH=str(ROOT))
    env["OMP_NUM_THREADS"] = "1"
    return env, home, tmp


def _everything_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("fmt", list(MODEL_FLAGS))
def test_an_audit_writes_nothing_outside_its_run_and_data_directories(fmt, inputs, tmp_path):
    env, home, tmp = _as_a_user(tmp_path)
    args = [
        *("audit", "--model", str(inputs / f"model.{fmt}"), *MODEL_FLAGS[fmt]),
        *("--unlabeled", str(inputs / "unlabeled.zip"), "--test", str(inputs / "test.zip")),
        *("--trigger", "badnets:target=7,size=2,margin=0", "--no-blind", "--kd-epochs", "1"),
        *("--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress"),
    ]
    r = subprocess.run([sys.executable, "-m", "kdcore", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "report.json").is_file()
    assert _everything_in(home) == []  # no ~/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid, nothing
    assert _everything_in(tmp) == []  # no telemetry session file, no torchinductor_<user>, no sandbox folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "home", "run", "tmp"]


CHECK_MODELS = """
import json, sys
from kdcore import sandbox
from kdcore.models.spec import ModelSpec
from kdcore.sandbox import runner
from kdcore.third_party import import_onnxruntime

def loaded():
    with open(f"/proc/{runner._SERVER.proc.pid}/maps") as f:
        return {"here": "onnxruntime" in sys.modules, "fork server": "onnxruntime" in f.read()}

seen = {}
sandbox.check_model(sys.argv[1], ModelSpec.from_json(sys.argv[3]))
seen["after the .pt check"] = loaded()
sandbox.check_model(sys.argv[2])
seen["after the .onnx check"] = loaded()
import_onnxruntime()
seen["after importing it"] = loaded()
print(json.dumps(seen))
"""


def test_onnxruntime_is_loaded_only_for_an_onnx_model_and_with_its_telemetry_off(inputs, tmp_path):
    env, home, tmp = _as_a_user(tmp_path)
    argv = [str(inputs / "model.pt"), str(inputs / "model.onnx"), SPEC.to_json()]
    r = subprocess.run([sys.executable, "-c", CHECK_MODELS, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout)
    assert seen["after the .pt check"] == {"here": False, "fork server": False}
    assert seen["after the .onnx check"] == {"here": False, "fork server": False}  # only its throw-away child
    assert seen["after importing it"] == {"here": True, "fork server": False}
    assert _everything_in(home) == []  # telemetry off in the child and here
    assert _everything_in(tmp) == []


CALL_A_CACHING_READER = """
import json
from kdcore import sandbox
print(json.dumps(sandbox.run("tests.sandbox_readers:write_to_home_and_caches")))
"""


def test_a_sandboxed_child_keeps_its_homes_and_caches_in_its_temporary_folder(tmp_path):
    env, home, tmp = _as_a_user(tmp_path)
    r = subprocess.run([sys.executable, "-c", CALL_A_CACHING_READER], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout)
    assert seen.pop("telemetry") == "1"
    (work,) = {Path(path).relative_to(tmp).parts[0] for path in seen.values()}  # one folder for all …
    assert work.startswith("kdcore-sandbox-"), seen
    assert _everything_in(tmp) == []  # … removed with what the child wrote there
    assert _everything_in(home) == []
