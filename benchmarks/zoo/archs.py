"""The zoo's architectures. Three come from kdcore's registry and are saved as a kdcore user saves
a registry model (.safetensors with its spec); two are classes defined here, outside the registry,
and reach the audit the way a user's own model does: exported to a file the audit reads.

- `mobilenet-onnx`: `MobileNetish`, depthwise-separable convolutions with BatchNorm and ReLU6,
  global average pooling (no dense hidden layer), exported with `torch.onnx.export`;
- `groupnorm-pt2`: `GroupNormNet`, convolutions with GroupNorm and max pooling, exported with
  `torch.export.export` + `torch.export.save` (all defaults: a batch size of 1 fixed in the graph).

The ONNX export departs from the defaults in two settings, both what kdcore's own refusal tells a
user to do (torch 2.14's exporter writes the weights to a `.onnx.data` file beside the graph and fixes
the batch size at the example's): `external_data=False` and a dynamic batch dimension.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# name → (how it is built: "registry" or the class here, the file format the audit reads)
ARCHS: dict[str, tuple[str, str]] = {
    "paper-cnn": ("registry", "safetensors"),
    "paper-vgg11": ("registry", "safetensors"),
    "resnet18-small": ("registry", "safetensors"),
    "mobilenet-onnx": ("MobileNetish", "onnx"),
    "groupnorm-pt2": ("GroupNormNet", "pt2"),
}


def _separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """A depthwise 3×3 then a pointwise 1×1 convolution, each with BatchNorm and ReLU6 (MobileNet v1)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU6(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class MobileNetish(nn.Module):
    """A small MobileNet-v1-style net for 1×28×28: stem, four separable blocks, average pooling."""

    def __init__(self, num_classes: int = 10, channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(inplace=True),
            _separable(16, 32, 2),  # (B, 32, 14, 14)
            _separable(32, 64, 1),
            _separable(64, 64, 2),  # (B, 64, 7, 7)
            _separable(64, 128, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class GroupNormNet(nn.Module):
    """Two 3×3 convolutions with GroupNorm (8 groups) and 2×2 max pooling, dense 128, dense N."""

    def __init__(self, num_classes: int = 10, channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.GroupNorm(8, 32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GroupNorm(8, 64),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 64, 7, 7)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


CLASSES = {"MobileNetish": MobileNetish, "GroupNormNet": GroupNormNet}


def export(model: nn.Module, fmt: str, path: Path, input_shape: tuple[int, int, int]) -> Path:
    """Write `model` (eval mode) to `path` as a user would: ONNX or a torch.export archive."""
    model = model.cpu().eval()
    example = (torch.zeros(1, *input_shape),)
    if fmt == "onnx":
        batch = {0: torch.export.Dim("batch")}
        torch.onnx.export(model, example, str(path), dynamic_shapes=(batch,), external_data=False, verbose=False)
    elif fmt == "pt2":
        torch.export.save(torch.export.export(model, example), str(path))
    else:
        raise ValueError(f"no exporter for {fmt!r}")
    return path
