"""Place the trigger yourself (the Lesson page): on a test image or one you upload, a square (or a
pattern image) you place, size and fade in, and what the teacher, the distilled student and the
fine-tuned student answer, each with its Grad-CAM, redrawn as the controls move.

A redraw is cheap: the page's fragment reruns alone; the models are loaded once per server
(`app.explain_figures.run_model`, st.cache_resource); each model sees one batch of two images (as
given, with your trigger) through `app.explain_figures.gradcam_panels`, the Explain page's Grad-CAM.
The mark is blended in by the engine's own `kdcore.triggers.pattern.apply`, the function every patch
trigger stamps with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch

from app.explain_figures import as_display, gradcam_panels, model_label, upscale
from app.lesson import POOL, Examples, lesson_data, say_class
from app.state import show_error
from app.uploads import image_types
from kdcore.errors import InputError, KDCoreError
from kdcore.sandbox import decode_image
from kdcore.triggers import BadNets, Trigger
from kdcore.triggers.pattern import apply

MAX_SIZE = 10  # pixels: the largest square (the demo's is 3)
SOURCES = ("A test image", "My own image")
SHAPES = ("White square", "My pattern image")


@dataclass(frozen=True)
class Placement:
    """Where and how strongly the mark goes: top-left pixel (x: column, y: row), side, weight 0–1."""

    x: int
    y: int
    size: int
    intensity: float


def default_placement(trigger: Trigger, h: int, w: int) -> Placement:
    """The attacker's own square where it was stamped; for another kind of trigger a 3-pixel square
    in the lower-right corner."""
    size = trigger.size if isinstance(trigger, BadNets) else 3
    row, col = trigger.box(h, w) if isinstance(trigger, BadNets) else (h - size - 1, w - size - 1)
    return Placement(col, row, size, 1.0)


def place_mark(images: torch.Tensor, pattern: torch.Tensor, where: Placement) -> torch.Tensor:
    """uint8 images (N, C, H, W) with `pattern` (C, s, s) blended in at `where`."""
    weight = torch.full((where.size, where.size), float(where.intensity))
    return apply(images, pattern, weight, where.y, where.x)


@st.cache_data(show_spinner=False, max_entries=16)
def _decoded(data: bytes, shape: tuple[int, int, int], name: str) -> np.ndarray:
    return decode_image(data, shape, name).numpy()  # in the sandbox: an uploaded file is untrusted


def _image_ui(run_dir: str, ex: Examples, shape: tuple[int, int, int]) -> tuple[torch.Tensor, int | None] | None:
    """The image to stamp, uint8 (C, H, W), and its true class (None for an upload)."""
    data = lesson_data(run_dir)
    source = st.radio("Picture", SOURCES, horizontal=True, key="lesson_source")
    if source == SOURCES[1]:
        f = st.file_uploader("Your picture", type=image_types(), key="lesson_upload")
        if f is None:
            st.info(f"Upload a picture: it is turned into the model's {shape[1]}×{shape[2]} grey input.")
            return None
        return torch.from_numpy(_decoded(f.getvalue(), shape, f.name)), None
    names = data.test.class_names
    pool = list(ex.index[:POOL])
    pick = st.selectbox(
        "Test picture",
        pool,
        key="lesson_image",
        format_func=lambda i: f"test picture #{i} · {say_class(int(data.test.labels[i]), names)}",
        help="Pictures the models never saw in training; those that show the backdoor best come first.",
    )
    return data.test.images[pick], int(data.test.labels[pick])


def _clamp(key: str, top: int) -> None:
    if st.session_state.get(key, 0) > top:
        st.session_state[key] = top


def _controls_ui(start: Placement, h: int, w: int) -> Placement:
    if "lesson_x" not in st.session_state:  # the attacker's placement to begin with
        st.session_state.update(lesson_x=start.x, lesson_y=start.y, lesson_size=start.size, lesson_intensity=100)
    size = st.slider("Size (pixels)", 1, MAX_SIZE, key="lesson_size", help="The side of the square.")
    _clamp("lesson_x", w - size)
    _clamp("lesson_y", h - size)
    x = st.slider("Left ↔ right", 0, w - size, key="lesson_x", help="Column of the square's top-left pixel.")
    y = st.slider("Top ↕ bottom", 0, h - size, key="lesson_y", help="Row of the square's top-left pixel.")
    strength = st.slider(
        "Intensity (%)", 0, 100, key="lesson_intensity", help="0 %: no mark at all; 100 %: the mark pasted on top."
    )
    return Placement(x, y, size, strength / 100)


def _pattern_ui(where: Placement, channels: int) -> torch.Tensor:
    """(C, s, s) uint8: white, or the uploaded pattern shrunk to the square's size."""
    shape = st.radio("Mark", SHAPES, horizontal=True, key="lesson_shape")
    white = torch.full((channels, where.size, where.size), 255, dtype=torch.uint8)
    if shape == SHAPES[0]:
        return white
    f = st.file_uploader("Your pattern", type=image_types(), key="lesson_pattern")
    if f is None:
        st.caption("Upload a pattern image; until then the mark is a white square.")
        return white
    return torch.from_numpy(_decoded(f.getvalue(), (channels, where.size, where.size), f.name))


@st.fragment
def trigger_playground_ui(run_dir: str, ex: Examples, models: tuple[str, ...], trigger: Trigger) -> None:
    """The controls on the left, each model's answer and Grad-CAM on the right; a fragment, so moving
    a control reruns this section only."""
    try:
        _playground(run_dir, ex, models, trigger)
    except KDCoreError as e:  # a fragment's rerun does not pass through the page's own handler
        show_error(e)


def _playground(run_dir: str, ex: Examples, models: tuple[str, ...], trigger: Trigger) -> None:
    data = lesson_data(run_dir)
    names = data.test.class_names
    shape = tuple(data.test.images.shape[1:])
    c, h, w = shape
    target = trigger.target
    left, right = st.columns([1, 3])
    with left:
        picked = _image_ui(run_dir, ex, shape)
        if picked is None:
            return
        image, truth = picked
        where = _controls_ui(default_placement(trigger, h, w), h, w)
        pattern = _pattern_ui(where, c)
    if where.x + where.size > w or where.y + where.size > h:
        raise InputError(f"The mark does not fit: move it left or up, or make it smaller than {where.size} pixels")
    batch = torch.stack([image, place_mark(image[None], pattern, where)[0]]).numpy()  # (2, C, H, W)
    panels = {m: gradcam_panels(run_dir, m, batch, (None, None)) for m in models}
    with right, st.container(key="lesson_trigger_preds"):
        cols = st.columns(1 + len(models))
        true = "" if truth is None else f" · really {say_class(truth, names)}"
        cols[0].image(upscale(as_display(batch[1]), 168), caption=f"your picture{true}", width="stretch")
        for col, m in zip(cols[1:], models, strict=True):
            probs, overlays, _ = panels[m]
            said, before = int(probs[1].argmax()), int(probs[0].argmax())
            col.image(upscale(overlays[1], 168), caption="where it looks (Grad-CAM)", width="stretch")
            flipped = " 🚨" if said == target and before != target else ""
            with col.container(key=f"lesson_pred_{m}"):
                st.markdown(f"**{model_label(m)}** says **{say_class(said, names)}** ({probs[1, said]:.0%}){flipped}")
            col.caption(f"without the mark: {say_class(before, names)} ({probs[0, before]:.0%})")
    st.caption(
        "Grad-CAM colours the pixels that pushed each model to its answer (red: most). Where the backdoor "
        "fires, the teacher looks almost only at the mark; the students may notice it too, but it does not "
        "change their answer."
    )
