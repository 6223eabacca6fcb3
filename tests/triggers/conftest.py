"""Trigger files for the trigger tests: small PNG patterns and masks, and a triggered test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore.triggers import Blend, Patch, Recovered, Trigger, TriggeredSet
from kdcore.triggers.recovered import FILE, recovered_tensors, write_recovered


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture(scope="session")
def trigger_files(tmp_path_factory) -> dict[str, Path]:
    """rgba: a 3×3 RGBA pattern with a checkerboard alpha; rgb: 4×5 opaque RGB; mask: 4×5 grey;
    white3: a 3×3 white square; logo: 16×16 RGB; triggered: a folder of two unlabelled images;
    recovered: a run folder holding three recovered 8×8 grey triggers."""
    root = tmp_path_factory.mktemp("trigger-files")
    rng = np.random.default_rng(0)
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (3, 3, 3))
    rgba[..., 3] = [[255, 0, 255], [0, 128, 0], [255, 0, 255]]
    files = {
        "rgba": save_png(root / "rgba.png", rgba, "RGBA"),
        "rgb": save_png(root / "rgb.png", rng.integers(0, 256, (4, 5, 3)), "RGB"),
        "mask": save_png(root / "mask.png", rng.integers(0, 256, (4, 5)), "L"),
        "white3": save_png(root / "white3.png", np.full((3, 3), 255), "L"),
        "logo": save_png(root / "logo.png", rng.integers(0, 256, (16, 16, 3)), "RGB"),
    }
    for i in range(2):
        save_png(root / "triggered" / f"{i}.png", rng.integers(0, 256, (8, 8)), "L")
    files["triggered"] = root / "triggered"
    g = torch.Generator().manual_seed(0)
    tensors = recovered_tensors(
        torch.rand(3, 8, 8, generator=g), 255 * torch.rand(3, 1, 8, 8, generator=g), [0, 1, 2],
        torch.tensor([False, True, False]), torch.tensor([0.3, 2.5, 0.6]),
    )  # fmt: skip
    write_recovered(root / "nc-run" / FILE, tensors)
    files["recovered"] = root / "nc-run"
    return files


@pytest.fixture(scope="session")
def file_examples(trigger_files) -> dict[str, Trigger]:
    """One non-default instance of every trigger kind that reads files."""
    f = trigger_files
    return {
        "patch": Patch(target=2, source=5, image=str(f["rgb"]), mask=str(f["mask"]), x=1, y=2, alpha=0.5),
        "blend": Blend(target=4, image=str(f["logo"]), alpha=0.3),
        "triggered": TriggeredSet(target=6, path=str(f["triggered"])),
        "recovered": Recovered(run=str(f["recovered"]), target=2, source=0),
    }
