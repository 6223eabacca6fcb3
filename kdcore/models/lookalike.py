"""Which known architecture a file's weights look like: the hint in the key-mismatch error.

A state_dict's key names are the module tree of the model that saved it (`layer1.0.conv1.weight` is
a torchvision ResNet's). `looks_like` compares the file's keys with those of the built-in
architectures and a short list of common torchvision ones, each built once on the meta device (no
memory, no random draws, milliseconds), and names the one whose keys overlap the most (Jaccard
index ≥ `MIN_OVERLAP`), ties broken by how many tensor shapes agree. Only called when a file does
not fit its architecture, so it costs nothing on the normal path.
"""

from __future__ import annotations

from functools import cache

import torch

from kdcore.errors import KDCoreError
from kdcore.models.registry import ARCHS, DEFAULT_INPUT, build_model
from kdcore.models.spec import ModelSpec

TORCHVISION = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "alexnet",
    "densenet121",
    "efficientnet_b0",
)
MIN_OVERLAP = 0.9  # |file ∩ arch| / |file ∪ arch| of the key sets


@cache
def _shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """The state_dict key → shape of `arch` built for 10 classes, on the meta device; {} if it cannot be built."""
    shape = DEFAULT_INPUT.get(arch, (3, 224, 224))
    try:
        with torch.device("meta"):
            model = build_model(ModelSpec(arch, 10, shape))
    except (KDCoreError, ValueError, RuntimeError, NotImplementedError):
        return {}
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def candidates() -> tuple[str, ...]:
    return (*sorted(ARCHS), *(f"tv:{name}" for name in TORCHVISION))


def looks_like(got: dict[str, tuple[int, ...]], exclude: str = "") -> str:
    """The candidate architecture whose keys match `got` (key → shape) best, or "" when none is close.
    `exclude`: the architecture the file was just loaded as (it did not fit)."""
    keys = set(got)
    best, best_score = "", (MIN_OVERLAP, -1)
    for arch in candidates():
        theirs = _shapes(arch)
        if arch == exclude or not theirs or not keys:
            continue
        overlap = len(keys & set(theirs)) / len(keys | set(theirs))
        score = (overlap, sum(tuple(got[k]) == theirs[k] for k in keys & set(theirs)))
        if score >= best_score:
            best, best_score = arch, score
    return best
