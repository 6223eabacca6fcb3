"""timm models end to end on a few hundred Fashion-MNIST images, CPU (issue 9, "done when"):
`timm:resnet18` as weights + `--arch`, and a tiny timm ViT as a Hugging Face-style folder written by
timm's `save_for_hf` (no flags: config.json says what it is) — each audited, then explained with Grad-CAM.

Grad-CAM on a ViT: its only nn.Conv2d is the patch embedding (`patch_embed.proj`), a linear map of
each pixel patch that runs before any attention, so "the last conv" there is an input-level map at
patch resolution, not a class-discriminative feature map. It runs when chosen (`--layers
last_conv=patch_embed.proj`), and a layer that is not a conv is refused listing the ones there are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from PIL import Image
from timm.models import save_for_hf

from kdcore.config import from_dict
from kdcore.data.builtin import load_fashion_mnist
from kdcore.errors import ConfigError
from kdcore.explain.gradcam import gradcam
from kdcore.models.layers import choose_layer
from kdcore.models.loading import load_model
from kdcore.runs.audit import run_audit
from kdcore.runs.configs import AuditConfig
from tests.conftest import needs_fashion_mnist

pytestmark = needs_fashion_mnist

TINY_VIT = {"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}


def _png(path: Path, img: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img[0].numpy()).save(path)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> dict:
    """300 t10k-split images: 100 unlabelled, 100 labelled for fine-tuning, 100 for testing."""
    root = tmp_path_factory.mktemp("fmnist")
    data = load_fashion_mnist("t10k").subset(list(range(300)))
    for i in range(300):
        part = ("unlabeled/x", "train", "test")[i // 100]
        sub = f"{part}/{int(data.labels[i])}" if part != "unlabeled/x" else part
        _png(root / sub / f"{i:03d}.png", data.images[i])
    return {"root": root, "images": data.images[:4]}


def _audit(fmnist: dict, model: Path, out: Path, **kw) -> dict:
    root = fmnist["root"]
    cfg = {
        "model": str(model),
        "unlabeled": str(root / "unlabeled"),
        "train": str(root / "train"),
        "test": str(root / "test"),
        "trigger": {"kind": "badnets", "target": 0, "size": 3, "margin": 0},
        "device": "cpu",
        "kd": {"distill": {"epochs": 1, "batch_size": 50}, "finetune": {"epochs": 1, "val_fraction": 0.1}},
        **kw,
    }
    report = run_audit(from_dict(AuditConfig, cfg), out)
    assert json.loads((out / "report.json").read_text())["kind"] == "audit"
    for role in ("teacher", "student", "finetuned"):
        assert set(report[role]) >= {"clean_acc", "poison_acc", "asr"}, role
    return report


def test_timm_resnet18_audit_and_gradcam(fmnist, tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)
    safetensors.torch.save_file(net.state_dict(), tmp_path / "rn.safetensors")
    report = _audit(fmnist, tmp_path / "rn.safetensors", tmp_path / "run", arch="timm:resnet18", num_classes=10,
                    input_shape=(1, 28, 28))  # fmt: skip
    assert report["model"]["spec"]["arch"] == "timm:resnet18"
    model, spec = load_model(tmp_path / "run" / "models" / "finetuned.safetensors")
    assert choose_layer(model, spec, "last_conv")[0] == "layer4.1.conv2"
    maps = gradcam(model, spec, fmnist["images"], None)
    assert maps.shape == (4, 28, 28) and maps.min() >= 0 and maps.max() <= 1


def test_timm_vit_from_a_save_for_hf_folder_audit_and_gradcam(fmnist, tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, in_chans=1, img_size=28,
                            **TINY_VIT)  # fmt: skip
    save_for_hf(net.eval(), tmp_path / "vit", safe_serialization=True)
    report = _audit(fmnist, tmp_path / "vit", tmp_path / "run", layers=("last_conv=patch_embed.proj",))
    spec = report["model"]["spec"]
    assert spec["arch"] == "timm:vit_tiny_patch16_224" and spec["input_shape"] == [1, 28, 28]
    assert spec["layers"] == {"last_conv": "patch_embed.proj"}
    model, spec = load_model(tmp_path / "run" / "models" / "finetuned.safetensors")
    assert spec.layers == {"last_conv": "patch_embed.proj"}  # the choice travels with the saved model
    maps = gradcam(model, spec, fmnist["images"], None)
    assert maps.shape == (4, 28, 28) and maps.max() <= 1
    assert len({tuple(m[::7, ::7].ravel()) for m in maps}) > 1  # per-image maps, not one constant
    with pytest.raises(ConfigError, match=r"'blocks.0.norm1' is a LayerNorm, not an nn.Conv2d.*\['patch_embed.proj'\]"):
        gradcam(model, spec.replace(layers={"last_conv": "blocks.0.norm1"}), fmnist["images"], None)
    # Left to itself, the layer choice refuses the patch embedding: a ViT has no conv feature block.
    with pytest.raises(ConfigError, match=r"patch_embed.proj\) cuts the image into patches.*choose it as the conv"):
        gradcam(model, spec.replace(layers={}), fmnist["images"], None)
