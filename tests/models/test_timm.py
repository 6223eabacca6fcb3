"""timm architectures by name and Hugging Face-style timm model folders and zips (kdcore.models.timmhf).

Folders are written by timm's own `timm.models.save_for_hf` (no network: it only writes files), then
read back as a folder, as a zip with one top folder and as a flat zip."""

from __future__ import annotations

import json
import socket
import zipfile
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

from kdcore.errors import ConfigError, ModelLoadError
from kdcore.models import timmhf
from kdcore.models.loading import load_model, read_spec, read_state_dict
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.models.timmhf import spec_from_config

TINY_VIT = {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
RESNET = ModelSpec("timm:resnet18", 10, (1, 28, 28), (0.5,), (0.5,))
VIT = ModelSpec("timm:vit_tiny_patch16_224", 10, (1, 28, 28), extra=TINY_VIT)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*a, **k):
        raise AssertionError("kdcore tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("spec", [RESNET, VIT], ids=["resnet18", "vit"])
def test_timm_names_build_offline_for_the_spec(spec, no_network):
    model = build_model(spec)
    assert model(torch.zeros(2, *spec.input_shape)).shape == (2, 10)
    assert model.pretrained_cfg["architecture"] == spec.arch.removeprefix("timm:")


def test_vit_is_sized_for_the_spec_input_and_a_cnn_is_not_told_one():
    vit = build_model(VIT)
    assert vit.patch_embed.img_size == (28, 28) and vit.patch_embed.num_patches == 49
    default = build_model(VIT.replace(input_shape=(3, 224, 224), extra={"depth": 1}))
    assert default.patch_embed.img_size == (224, 224)
    # a CNN takes any size: img_size would be an unknown option for it
    assert build_model(RESNET.replace(input_shape=(3, 40, 40)))(torch.zeros(1, 3, 40, 40)).shape == (1, 10)


def test_build_is_seeded_like_every_other_architecture():
    torch.manual_seed(3)
    a = build_model(VIT)
    torch.manual_seed(3)
    b = build_model(VIT)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_unknown_name_lists_close_matches():
    with pytest.raises(ConfigError, match=r"Unknown timm model 'resnet181'; close matches: .*resnet18\b"):
        build_model(RESNET.replace(arch="timm:resnet181"))


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"pretrained": True}, r"may not set \['pretrained'\]"),
        ({"checkpoint_path": "/etc/passwd"}, r"may not set \['checkpoint_path'\]"),
        ({"pretrained_cfg_overlay": "x"}, r"may not set \['pretrained_cfg_overlay'\]"),
        ({"depht": 2}, r"timm's resnet18 does not accept the options .*depht"),
    ],
)
def test_options_that_reach_files_the_hub_or_nothing_are_refused(extra, match):
    with pytest.raises(ConfigError, match=match):
        build_model(RESNET.replace(extra=extra))


def test_a_model_too_large_is_refused_on_the_meta_device_before_any_memory(set_limits):
    set_limits(max_tensor_elements=1_000_000)  # resnet18 has 11 M weights
    with pytest.raises(ConfigError, match=r"timm's resnet18 .*has 11,\d{3},\d{3} weights; at most 1,000,000"):
        build_model(RESNET)


# --- Hugging Face-style folders and zips -----------------------------------------------------------


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, in_chans=1, img_size=28, **TINY_VIT
    )
    root = tmp_path_factory.mktemp("hf") / "my-vit"
    save_for_hf(model.eval(), root, safe_serialization=True, model_config={"label_names": ["cat", "dog", "eel"]})
    return root, model


def _zip(folder: Path, dest: Path, top: str | None) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, f"{top}/{p.name}" if top else p.name)
        z.writestr(f"__MACOSX/{top or '.'}/._config.json", b"Finder's resource fork")  # as macOS zips do
    return dest


def test_save_for_hf_folder_gives_the_spec_timm_wrote(vit_folder):
    root, _ = vit_folder
    spec = read_spec(root)
    assert spec.arch == "timm:vit_tiny_patch16_224" and spec.num_classes == 3
    assert spec.input_shape == (1, 28, 28) and spec.mean == (0.5,) and spec.std == (0.5,)
    assert spec.class_names == ("cat", "dog", "eel")
    assert {k: spec.extra[k] for k in TINY_VIT} == TINY_VIT
    assert not {"num_classes", "in_chans", "img_size"} & set(spec.extra)


@pytest.mark.parametrize("layout", ["folder", "zip-with-top-folder", "flat-zip"])
def test_folder_and_zips_load_the_same_model(vit_folder, tmp_path, layout, no_network):
    root, original = vit_folder
    path = {
        "folder": lambda: root,
        "zip-with-top-folder": lambda: _zip(root, tmp_path / "m.zip", "my-vit"),
        "flat-zip": lambda: _zip(root, tmp_path / "m.zip", None),
    }[layout]()
    model, spec = load_model(path)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-6)
    assert spec.class_names == ("cat", "dog", "eel")
    assert not any(tmp_path.glob("**/model.safetensors"))  # a zip is never unpacked beside itself


def test_pytorch_model_bin_is_read_weights_only(tmp_path):
    model = timm.create_model("resnet18", pretrained=False, num_classes=4, in_chans=1)
    save_for_hf(model, tmp_path / "rn", safe_serialization=False)
    assert not (tmp_path / "rn" / "model.safetensors").exists()
    state = read_state_dict(_zip(tmp_path / "rn", tmp_path / "rn.zip", "rn"))
    assert state.keys() == model.state_dict().keys()
    loaded, spec = load_model(tmp_path / "rn", timmhf.read_spec(tmp_path / "rn", input_shape=(1, 16, 16)))
    assert spec.input_shape == (1, 16, 16) and loaded(torch.zeros(1, 1, 16, 16)).shape == (1, 4)


def test_a_pickled_payload_in_pytorch_model_bin_is_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 2}))

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin"):
        read_state_dict(_zip(folder, tmp_path / "evil.zip", None))


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({"train/cat/1.png": b"x"}, r"is a zip but not a Hugging Face-style model \(no config.json"),
        ({"a/config.json": b"{}", "b/model.safetensors": b"x"}, r"not a Hugging Face-style model"),
        ({"config.json": b"[1, 2]"}, r"not a JSON object of a timm model config"),
        ({"config.json": b"{not json"}, r"config.json of m.zip is not valid JSON"),
        ({"config.json": json.dumps({"num_classes": 3}).encode()}, r'no "architecture"'),
        ({"config.json": json.dumps({"architecture": "resnet18", "num_classes": 1}).encode()}, "at least 2"),
    ],
)
def test_zips_that_are_not_timm_models_are_refused_clearly(tmp_path, members, match):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(ModelLoadError, match=match):
        read_spec(path)


def test_config_without_weights_says_what_is_missing(tmp_path):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps({"architecture": "resnet18", "num_classes": 3}))
    with pytest.raises(ModelLoadError, match=r"no model.safetensors or pytorch_model.bin"):
        read_state_dict(path)


def test_older_single_dict_configs_and_label_maps():
    legacy = {"architecture": "resnet18", "num_classes": 3, "input_size": [3, 32, 32], "labels": ["a", "b", "c"]}
    spec = spec_from_config(legacy)
    assert (spec.arch, spec.input_shape, spec.class_names) == ("timm:resnet18", (3, 32, 32), ("a", "b", "c"))
    by_index = {"architecture": "resnet18", "num_classes": 2, "label_names": {"1": "b", "0": "a"}, "pretrained_cfg": {}}
    assert spec_from_config(by_index).class_names == ("a", "b")
    # a 1-channel model of a 3-channel recipe: timm averages the mean and std, and so do we
    rgb = {
        "architecture": "resnet18",
        "num_classes": 2,
        "model_args": {"in_chans": 1},
        "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.2]},
    }
    spec = spec_from_config(rgb)
    assert (
        spec.input_shape == (1, 224, 224) and spec.mean == pytest.approx((0.5,)) and spec.std == pytest.approx((0.2,))
    )


def test_a_timm_name_without_an_input_shape_is_built_for_timms_default():
    from kdcore.runs.configs import AuditConfig

    def shape(arch: str) -> tuple:
        return AuditConfig(model="absent.pt", unlabeled="u", arch=arch, num_classes=10).model_spec().input_shape

    assert shape("timm:vit_base_patch16_384") == (3, 384, 384) and shape("timm:resnet18") == (3, 224, 224)
