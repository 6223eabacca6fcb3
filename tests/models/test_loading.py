"""Saving and safe loading of model files (kdcore.models.loading).

The payload tests build real malicious pickles (unpickling them runs `touch <canary>` through
os.system), prove in a subprocess that they do fire under a full unpickler, and then check that
kdcore refuses them and that their canary never appears.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

from kdcore.errors import ConfigError, ModelLoadError
from kdcore.models.loading import load_model, read_spec, read_state_dict, save_model
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec

SPEC = ModelSpec("paper-cnn", 10, (1, 8, 8))  # ~143k parameters


@pytest.fixture
def model() -> nn.Module:
    return build_model(SPEC).eval()


@pytest.fixture
def torch_load_calls(monkeypatch) -> list[dict]:
    """Record the keyword arguments of every torch.load call the loader makes."""
    calls: list[dict] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, tensor in a.items():
        assert torch.equal(tensor, b[k]), k


# --- save / load round trip -------------------------------------------------------------------


def test_roundtrip_keeps_weights_outputs_and_spec(model, tmp_path):
    path = save_model(model, SPEC, tmp_path / "m.safetensors")
    assert path == tmp_path / "m.safetensors"
    assert (tmp_path / "m.json").is_file()
    with safetensors.safe_open(path, framework="pt") as f:
        assert ModelSpec.from_dict(json.loads(f.metadata()["kdcore_spec"])) == SPEC

    (tmp_path / "m.json").unlink()  # the metadata alone must be enough
    assert read_spec(path) == SPEC
    loaded, spec = load_model(path)
    assert spec == SPEC
    assert not loaded.training
    assert_same_weights(model.state_dict(), loaded.state_dict())
    x = torch.rand(4, *SPEC.input_shape)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


def test_spec_from_json_sidecar_when_metadata_has_none(model, tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)  # no kdcore metadata
    assert read_spec(path) is None
    with pytest.raises(ModelLoadError, match="--arch"):
        load_model(path)

    (tmp_path / "plain.json").write_text(SPEC.to_json())
    assert read_spec(path) == SPEC
    loaded, spec = load_model(path)
    assert spec == SPEC
    assert_same_weights(model.state_dict(), loaded.state_dict())


def test_invalid_sidecar_spec_is_a_load_error(model, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    (tmp_path / "m.json").write_text('{"arch": "paper-cnn", "num_classes": 10, "colour": "red"}')
    with pytest.raises(ModelLoadError, match="colour"):
        read_spec(path)


def test_save_handles_tied_and_non_contiguous_tensors(model, tmp_path):
    head = model.classifier[3]
    strided = torch.empty(head.weight.shape[::-1]).t()  # same shape, transposed strides
    strided.copy_(head.weight.detach())
    head.weight = nn.Parameter(strided)
    assert not head.weight.is_contiguous()
    tied = nn.ModuleDict({"a": model, "b": model})  # every tensor appears under two keys

    path = save_model(tied, SPEC, tmp_path / "tied.safetensors")
    assert_same_weights(tied.state_dict(), read_state_dict(path))


def test_save_refuses_other_extensions(model, tmp_path):
    with pytest.raises(ConfigError, match=r"\.safetensors"):
        save_model(model, SPEC, tmp_path / "m.pt")


# --- PyTorch state_dict files ------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="state_dict"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="checkpoint-state_dict"),
        pytest.param(lambda sd: {"model_state_dict": sd, "optimizer": {}}, id="checkpoint-model_state_dict"),
        pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="dataparallel-prefix"),
    ],
)
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_torch_save_state_dict_loads(model, tmp_path, wrap, suffix, torch_load_calls):
    path = tmp_path / f"m{suffix}"
    torch.save(wrap(model.state_dict()), path)
    assert_same_weights(model.state_dict(), read_state_dict(path))
    loaded, spec = load_model(path, SPEC)
    assert spec == SPEC
    assert_same_weights(model.state_dict(), loaded.state_dict())
    assert torch_load_calls and all(c.get("weights_only") is True for c in torch_load_calls)


def test_non_tensor_entries_are_refused(model, tmp_path):
    path = tmp_path / "m.pt"
    torch.save({**model.state_dict(), "epoch": 3}, path)
    with pytest.raises(ModelLoadError, match="'epoch' \\(int\\)"):
        read_state_dict(path)


# --- files that do not fit the architecture --------------------------------------------------


def test_renamed_key_names_missing_and_unexpected(model, tmp_path):
    sd = model.state_dict()
    sd["classifier.3.kernel"] = sd.pop("classifier.3.weight")
    path = tmp_path / "m.pt"
    torch.save(sd, path)
    with pytest.raises(ModelLoadError) as e:
        load_model(path, SPEC)
    msg = str(e.value)
    assert "the file has classifier.3.kernel where the architecture expects classifier.3.weight" in msg
    assert e.value.details["missing"] == ["classifier.3.weight"]
    assert e.value.details["unexpected"] == ["classifier.3.kernel"]


def test_wrong_input_shape_names_key_and_both_shapes(tmp_path):
    big = SPEC.replace(input_shape=(1, 10, 10))
    path = save_model(build_model(big), big, tmp_path / "big.safetensors")
    with pytest.raises(ModelLoadError) as e:
        load_model(path, SPEC)
    msg = str(e.value)
    # classifier.1 = Linear(32·(H-4)·(W-4), 256): 32·4·4 = 512 expected for 8×8, 32·6·6 = 1152 in the file.
    assert "classifier.1.weight" in msg
    assert "[256, 512]" in msg and "[256, 1152]" in msg


def test_wrong_class_count_says_so(model, tmp_path):
    path = save_model(model, SPEC, tmp_path / "m.safetensors")
    with pytest.raises(ModelLoadError) as e:
        load_model(path, SPEC.replace(num_classes=3))
    msg = str(e.value)
    assert "10 output classes" in msg and "--num-classes is 3" in msg
    assert "wrong shape" not in msg


def test_many_problems_are_truncated(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({f"junk{i}.weight": torch.zeros(1) for i in range(25)}, path)
    with pytest.raises(ModelLoadError) as e:
        load_model(path, SPEC)
    assert "the file has 25 layer(s) the architecture does not know, e.g. junk0, junk1, junk2 and 22 more" in str(
        e.value
    )
    assert e.value.details["unexpected"] == [f"junk{i}.weight" for i in range(25)]  # the full list, for the dashboard


# --- unsafe files ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in torch 2.14
@pytest.mark.parametrize(
    "compile_",
    [
        pytest.param(torch.jit.script, id="script"),
        pytest.param(lambda m: torch.jit.trace(m, torch.zeros(1, *SPEC.input_shape)), id="trace"),
    ],
)
def test_torchscript_is_refused_before_torch_load(model, tmp_path, compile_, torch_load_calls):
    path = tmp_path / "scripted.pt"
    torch.jit.save(compile_(model), str(path))
    with pytest.raises(ModelLoadError, match="TorchScript") as e:
        read_state_dict(path)
    assert "state_dict" in str(e.value)
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_model(path, SPEC)
    assert torch_load_calls == []


def test_whole_pickled_module_is_refused(model, tmp_path, torch_load_calls):
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError) as e:
        load_model(path, SPEC)
    msg = str(e.value)
    assert "pickled object" in msg and "PaperCNN" in msg and "state_dict" in msg
    assert all(c.get("weights_only") is True for c in torch_load_calls)


class Payload:
    """Unpickling this runs `touch <canary>` through os.system: a stand-in for a malicious model."""

    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.canary)}",))


def write_payload(how: str, path: Path, canary: Path) -> None:
    obj = {"w": torch.zeros(1), "x": Payload(canary)}
    if how == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)


# A full unpickler (the one torch.load(weights_only=False) builds on). Only torch's own globals
# are stubbed so the subprocess does not spend seconds importing torch; os.system is real.
FULL_UNPICKLE = r"""
import io, pickle, sys, zipfile

class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.split(".")[0] == "torch":
            return lambda *args, **kwargs: None
        return super().find_class(module, name)

    def persistent_load(self, pid):
        return None

path = sys.argv[1]
if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
else:
    data = open(path, "rb").read()
Unpickler(io.BytesIO(data)).load()
"""


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the raw pickle's protocol
@pytest.mark.parametrize(("how", "suffix"), [("torch.save", ".pt"), ("pickle.dump", ".pth")])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, how, suffix, torch_load_calls):
    # The payload is real: fully unpickled elsewhere, it creates its own canary.
    proof_canary = tmp_path / "proof_canary"
    proof = tmp_path / f"proof{suffix}"
    write_payload(how, proof, proof_canary)
    subprocess.run([sys.executable, "-c", FULL_UNPICKLE, str(proof)], check=True, timeout=30)
    assert proof_canary.exists()

    canary = tmp_path / "canary"
    path = tmp_path / f"evil{suffix}"
    write_payload(how, path, canary)
    with pytest.raises(ModelLoadError, match="pickled object") as e:
        read_state_dict(path)
    assert "arbitrary code" in str(e.value) and "safetensors" in str(e.value)
    with pytest.raises(ModelLoadError, match="pickled object"):
        load_model(path, SPEC)
    assert not canary.exists()
    if how == "torch.save":  # protocol 2, like every torch.save: the weights-only unpickler refuses the global
        assert torch_load_calls and all(c.get("weights_only") is True for c in torch_load_calls)
    else:  # protocol 4's FRAME is an opcode torch.save never writes: refused before torch.load
        assert torch_load_calls == []


# --- unreadable files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("m.onnx", b"\x08\x07onnx", "not a valid ONNX file"),  # .onnx is read now (kdcore.models.onnxfile)
        ("m.safetensors", b"", "empty"),
        ("m.pt", b"", "empty"),
        ("m.safetensors", b"definitely not safetensors" * 10, "not a valid safetensors file"),
        ("m.pt", b"definitely not a pickle" * 10, "not a readable PyTorch file"),
    ],
)
def test_unreadable_files(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match):
        read_state_dict(path)
    with pytest.raises(ModelLoadError, match=match):
        load_model(path, SPEC)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.pt", SPEC)


# --- what a normal file may be, and what a sound one may not ---------------------------------------


def test_other_torch_save_layouts_load(model, tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert_same_weights(model.state_dict(), read_state_dict(legacy))
    saved = tmp_path / "saved.pt"
    torch.save(model.state_dict(), saved)
    rezipped = tmp_path / "rezipped.pt"  # unpacked and zipped again by a standard tool: deflated records
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(rezipped, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert_same_weights(model.state_dict(), read_state_dict(rezipped))


def test_half_precision_and_integer_buffers_are_sound(tmp_path):
    spec = ModelSpec("resnet18-small", 10, (3, 16, 16))  # BatchNorm: int64 num_batches_tracked
    sd = {k: v.half() if v.is_floating_point() else v for k, v in build_model(spec).state_dict().items()}
    path = tmp_path / "half.pt"
    torch.save(sd, path)
    loaded, _ = load_model(path, spec)
    assert next(loaded.parameters()).dtype == torch.float32
    sd = {k: v.float() if k.endswith("num_batches_tracked") else v for k, v in sd.items()}
    torch.save(sd, path)
    with pytest.raises(ModelLoadError, match=r"wrong type: .*num_batches_tracked \(float32, expected int64\)"):
        load_model(path, spec)


def test_model_size_limits(model, tmp_path, set_limits):
    path = save_model(model, SPEC, tmp_path / "m.safetensors")
    n = sum(t.numel() for t in model.state_dict().values())
    set_limits(max_tensor_elements=n - 1)
    with pytest.raises(ModelLoadError, match=rf"declares {n:,} tensor elements.*max_tensor_elements"):
        read_state_dict(path)
    set_limits(max_tensor_elements=n, max_model_file_bytes=path.stat().st_size - 1)
    with pytest.raises(ModelLoadError, match=r"max_model_file_bytes"):
        read_state_dict(path)


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_sparse_tensors_are_not_weights(tmp_path):
    path = tmp_path / "sparse.pt"
    torch.save({"w": torch.eye(3).to_sparse()}, path)
    with pytest.raises(ModelLoadError, match=r"not plain dense weights: w \(layout torch\.sparse_coo\)"):
        read_state_dict(path)


def test_read_spec_raises_one_error_type_for_any_malformed_file(model, tmp_path):
    for name, content in [("a.safetensors", b""), ("b.safetensors", b"garbage" * 20), ("c.safetensors", b"\x08" * 9)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelLoadError):
            read_spec(tmp_path / name)
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    (tmp_path / "m.json").write_bytes(b"\xff\xfe not utf-8")  # not a spec kdcore wrote: ignored, never a crash
    assert read_spec(path) is None
    (tmp_path / "m.json").write_text('{"arch": "paper-cnn", "num_classes": "ten"}')  # a kdcore spec, broken
    with pytest.raises(ModelLoadError, match="num_classes"):
        read_spec(path)
