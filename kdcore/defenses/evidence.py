"""A method's evidence files under `<run_dir>/evidence/`, written the same way by a `defend` run and by
the verdict's gathering of Neural Cleanse (kdcore.verdict.gather), so a `recovered:RUN_DIR` trigger and
the dashboard read either run alike.

<run_dir>/evidence/<name>.png            a picture (uint8 (C, H, W); grey for one channel)
<run_dir>/evidence/<group>.safetensors   raw tensors whose names have a dot, `<group>.<key>`
                                         (Neural Cleanse's float triggers: `recovered.mask`, ...)
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdcore.io import atomic_write_bytes
from kdcore.triggers.recovered import write_recovered


def write_evidence(run_dir: str | Path, images: dict[str, torch.Tensor]) -> None:
    """Write a method's evidence `images` (pictures and raw tensor groups, module docstring)."""
    raw: dict[str, dict[str, torch.Tensor]] = {}
    for name, img in images.items():
        group, dot, key = name.partition(".")
        if dot:
            raw.setdefault(group, {})[key] = img
        else:
            atomic_write_bytes(Path(run_dir) / "evidence" / f"{name}.png", png_bytes(img))
    for group, tensors in raw.items():
        write_recovered(Path(run_dir) / "evidence" / f"{group}.safetensors", tensors)


def png_bytes(img: torch.Tensor) -> bytes:
    """uint8 (C, H, W) → PNG bytes (grey for one channel)."""
    arr = img.detach().cpu().to(torch.uint8).numpy()
    arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
