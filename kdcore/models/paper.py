"""The two architectures of seed 000 (Yoshida & Fujino, AISec 2020), appendix A.1.

Table 7 (MNIST):  conv3×3·32 → conv3×3·32 → dense 256 → dense N; ReLU, no pooling.
Table 8 (GTSRB):  VGG-11 convolutions (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M)
                  → dense 4096 → dense 4096 → dense N, dropout 0.5 on the dense layers.
The softmax of the tables is left to the loss; models return logits.
"""

from __future__ import annotations

import torch
from torch import nn


class PaperCNN(nn.Module):
    """Table 7: two 3×3 convolutions (32 kernels, stride 1, no padding), dense 256, dense N."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        c, h, w = input_shape
        if h < 5 or w < 5:
            raise ValueError(f"PaperCNN needs images of at least 5×5; got {h}×{w}")
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3),
            nn.ReLU(inplace=True),
        )  # (B, 32, H-4, W-4)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * (h - 4) * (w - 4), 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class PaperVGG11(nn.Module):
    """Table 8: VGG-11 convolutions with 4096-4096-N dense layers (dropout 0.5).

    Pooling layers whose input would fall below 1×1 are skipped, so small inputs
    (e.g. 28×28 or 32×32) still work; for 32×32 GTSRB crops the map ends at 1×1.
    """

    def __init__(self, num_classes: int = 43, input_shape: tuple[int, int, int] = (3, 32, 32)):
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for v in _VGG11:
            if v == "M":
                if h >= 2 and w >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)  # (B, 512, h, w)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
