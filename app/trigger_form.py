"""The New-audit form's fields for triggers given as files (patch, blend, a triggered test set) or
recovered by Neural Cleanse, and the preview of a stamped image.

Uploaded trigger files are stored like every upload (`app.uploads.save_upload`, by content hash);
their paths go into the trigger dict and the trigger pins their SHA-256 itself
(`kdcore.triggers.pattern`). Files are decoded only in kdcore's sandbox: the pattern by the trigger,
the preview's clean image by `kdcore.sandbox`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from PIL import Image

from app.state import access, show_error
from app.uploads import image_types, upload_ui
from kdcore import sandbox
from kdcore.errors import KDCoreError
from kdcore.triggers import Patch, Trigger
from kdcore.triggers.badnets import LOCATIONS
from kdcore.triggers.recovered import FILE as RECOVERED_FILE

PATTERN_TYPES = ["png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff", "gif"]
PREVIEW_ZIP_BYTES = 32 * 2**20  # a bigger unlabelled zip is not decoded just for a preview: grey instead
PREVIEW_PX = 160  # small inputs are enlarged (nearest) to this width so the trigger can be seen
FULL_SIZE = "The pattern is as large as the input: it covers the whole image, so the location and margin do not apply."
# The colour picker's swatch has no border: a white swatch on the white page was invisible.
_SWATCH_CSS = "<style>.st-key-{key} [data-testid='stColorPickerBlock'] {{ border: 1px solid #8a8f99; }}</style>"


def _uploaded(label: str, key: str, types: list[str], help: str | None = None) -> str:
    up = st.file_uploader(label, type=types, key=key, help=help)
    return str(upload_ui(up) or "")


def rgb_of(hexcol: str) -> list[int]:
    """Hex colour to [R, G, B]: "#FFA500" → [255, 165, 0]."""
    return [int(hexcol[i : i + 2], 16) for i in (1, 3, 5)]


def colour_ui(container, label: str = "Colour", default: str = "#FFFFFF", key: str = "trigger_color") -> list[int]:
    """A colour picker whose swatch has a visible border and whose value is printed under it
    (`#FFFFFF · RGB 255, 255, 255`); returns the colour as [R, G, B] (0..255)."""
    with container:
        st.html(_SWATCH_CSS.format(key=key))
        hexcol = st.color_picker(label, default, key=key, help="The patch's colour; white is 255, 255, 255.")
        rgb = rgb_of(hexcol)
        st.caption(f"{hexcol.upper()} · RGB {', '.join(map(str, rgb))}")
    return rgb


def file_trigger_fields_ui(kind: str, d: dict) -> dict:
    """The fields of `kind` (patch, blend, triggered, recovered) added to the trigger dict `d`."""
    if kind == "patch":
        d["image"] = _uploaded(
            "Pattern image (its alpha channel, if any, is the mask)", "trigger_patch_image", PATTERN_TYPES
        )
        d["mask"] = _uploaded(
            "Mask (optional): a grey image of the pattern's size, white = patch", "trigger_patch_mask", PATTERN_TYPES
        )
        c1, c2, c3, c4 = st.columns(4)
        d["alpha"] = float(c1.slider("Weight α (1 = pasted)", 0.01, 1.0, 1.0, key="trigger_patch_alpha"))
        if c2.radio("Place at", ["a corner", "x, y"], key="trigger_patch_where", horizontal=True) == "a corner":
            d["location"] = c3.selectbox("Location", LOCATIONS, index=LOCATIONS.index("bottom-right"), key="tp_loc")
            d["margin"] = int(c4.number_input("Margin (px)", 0, 64, 1, key="trigger_patch_margin"))
        else:
            d["x"] = int(c3.number_input("x (column of the top-left pixel)", 0, 4096, 0, key="trigger_patch_x"))
            d["y"] = int(c4.number_input("y (row of the top-left pixel)", 0, 4096, 0, key="trigger_patch_y"))
    elif kind == "blend":
        d["image"] = _uploaded("Image blended over the input (resized to it)", "trigger_blend_image", PATTERN_TYPES)
        d["alpha"] = float(st.slider("Blend alpha", 0.01, 1.0, 0.2, key="trigger_blend_alpha"))
    elif kind == "triggered":
        d["path"] = _uploaded(
            "Triggered test images (.zip: one folder per true class, or all at the top level)",
            "trigger_triggered_zip",
            ["zip"],
        )
        st.caption("asr and poison_acc are measured on these images, next to the labelled test set (needed).")
    elif kind == "recovered":
        runs = recovered_runs()
        if not runs:
            st.info("No finished Neural Cleanse run yet: run it on the Defenses page first.")
        labels = {r: f"#{j} {label}" for j, label, r in runs}
        d["run"] = st.selectbox("Neural Cleanse run", list(labels), format_func=labels.get, key="trigger_rec_run") or ""
    return d


def recovered_runs() -> list[tuple[int, str, str]]:
    """(job id, label, run dir) of finished jobs whose evidence holds a recovered trigger, newest first."""
    return [
        (j.id, j.label or j.kind, j.run_dir)
        for j in access().jobs(("succeeded",))
        if j.run_dir and (Path(j.run_dir) / RECOVERED_FILE).is_file()
    ]


@st.cache_resource(max_entries=16, show_spinner="Reading the trigger…")
def make_trigger(d_json: str) -> Trigger:
    """The trigger of a dict, cached: a file trigger decodes its image in a sandbox once, not on every rerun."""
    return Trigger.from_dict(json.loads(d_json))


@st.cache_resource(max_entries=8, show_spinner="Decoding a clean image for the preview…")
def clean_example(path: str, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (C, H, W): the first image of an uploaded set (decoded in the sandbox); grey when there is none."""
    grey = torch.full(input_shape, 128, dtype=torch.uint8)
    p = Path(path) if path else None
    if p is None or not p.is_file():
        return grey
    if p.suffix.lower() == ".zip":
        if p.stat().st_size > PREVIEW_ZIP_BYTES:
            return grey
        images = sandbox.load_unlabeled(p, input_shape, name=p.name).images
        return images[0] if len(images) else grey
    return sandbox.decode_image(p.read_bytes(), input_shape, p.name)


def preview_source(files: list | None) -> str:
    """The path of the first uploaded unlabelled file (an image or a zip), stored like every upload."""
    if not files:
        return ""
    ok = {f".{e}" for e in image_types()} | {".zip"}
    first = next((f for f in files if Path(f.name).suffix.lower() in ok), None)
    return str(upload_ui(first) or "")


def _shown(x: torch.Tensor) -> np.ndarray:
    """uint8 (C, H, W) → an (H', W'[, 3]) array enlarged (nearest) so that small inputs can be seen."""
    arr = x.permute(1, 2, 0).numpy()
    arr = arr[..., 0] if arr.shape[2] == 1 else arr
    scale = max(1, PREVIEW_PX // arr.shape[1])
    size = (arr.shape[1] * scale, arr.shape[0] * scale)  # (W, H)
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.NEAREST))


def trigger_preview_ui(trigger: Trigger, input_shape: tuple[int, int, int] | None, files: list | None) -> str:
    """A clean image and the same image with the trigger, side by side. Why not (shown as one
    st.error line, and returned) when the trigger cannot be put on the model's inputs; "" otherwise."""
    if trigger.kind == "triggered":
        st.caption("A triggered test set brings its own images: there is nothing to stamp.")
        return ""
    if input_shape is None:
        st.caption("Upload a model to see a preview of the stamped image.")
        return ""
    try:
        clean = clean_example(preview_source(files), tuple(input_shape))
        stamped = trigger.stamp(clean[None])[0]
    except KDCoreError as e:
        return show_error(e)
    where = "the first unlabelled image" if files else f"a grey {'×'.join(map(str, input_shape))} image"
    c1, c2, _ = st.columns([1, 1, 2])
    c1.image(_shown(clean), caption=f"clean ({where})")
    c2.image(_shown(stamped), caption=f"+ trigger → class {trigger.target}")
    if isinstance(trigger, Patch) and trigger.fills(*input_shape[1:]):
        st.caption(FULL_SIZE)  # a toolkit's full-size pattern + mask: placed at the origin by the engine
    return ""
