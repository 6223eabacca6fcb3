"""The Explain page's models, cached computations and figures (seed 004: Cheng et al., "Defending
against Backdoor Attack on Deep Neural Networks", AdvML@KDD 2019, figs. 2–4).

- Loading: the run's context and models, cached once per run directory (`run_context`, `run_model`).
- Computations, cached per input: Grad-CAM panels (`gradcam_panels`), the ℓp norms of the
  activations clean vs triggered (`norm_stats`, through `kdcore.explain.compare_norms`) and one
  image's activation maps (`layer_activations`). Activations are measured where ℓ∞ pruning
  measures them: `ACT_ROLE` ("conv_activation": the BatchNorm that consumes the last conv, else
  the conv) after a ReLU, so the page and the defense talk about the same neurons.
- Figures are pure (values in, a figure out), and none needs chart code in the browser:
  `norm_histograms_svg` (fig. 4, SVG histograms, `app.svg`) and `activation_map_image` (fig. 3, an
  RGB image: tiles of one colour scale).

Models are shared by every session (st.cache_resource), and Grad-CAM hooks and freezes the model
it runs on, so every model computation holds `_compute_lock()`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from plotly.colors import sequential
from torch import nn

from app.charts import MODEL_LABELS, colour_lut
from app.svg import Bars, histogram_svg
from kdcore import views
from kdcore.errors import InputError
from kdcore.explain import NORMS, NormStats, compare_norms
from kdcore.models.layers import layer_report
from kdcore.models.loading import load_model
from kdcore.models.spec import ModelSpec
from kdcore.run_context import RunContext
from kdcore.runs.rebuild import load_context
from kdcore.train import predict_logits
from kdcore.triggers import Trigger
from kdcore.views import (
    ACT_ROLE,
    NORM_IMAGES,
    RunView,
    activations_key,
    at_layer,
    gradcam_key,
    norms_key,
    read_view,
    stored,
    stored_norms,
    top_images,
)

NORM_LABELS = {"l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}
COND_COLORS = {"clean": "#2ca02c", "triggered": "#1f77b4"}  # seed 004 fig. 4: green clean, blue + trigger


# ── loading ──────────────────────────────────────────────────────────────────────────────────────


@st.cache_resource(show_spinner="Loading the run's models and data…", max_entries=4)
def run_context(run_dir: str) -> RunContext:
    return load_context(run_dir, device="cpu")


@st.cache_resource(show_spinner="Reading the run's test images…", max_entries=4)
def test_context(run_dir: str) -> RunContext:
    """The run rebuilt without decoding its training set: all another trigger's ℓp norms need is the
    test set (an audit's training set can be tens of thousands of images: seconds to decode)."""
    return load_context(run_dir, device="cpu", with_train=False)


@st.cache_resource(show_spinner=False, max_entries=8)
def run_view(run_dir: str) -> RunView:
    """What the page needs before any model or image: from the run's `view/` (written at its end),
    else from the rebuilt run (older runs, or a view of another version)."""
    view = read_view(run_dir)
    if view is not None:
        return view
    ctx = run_context(run_dir)
    with _compute_lock():
        layers = layer_report(ctx.teacher, ctx.spec)
    n_train, n_test = (0 if d is None else len(d) for d in (ctx.train, ctx.test))
    classes = () if ctx.train is None else ctx.train.class_names
    return RunView(ctx.run_dir, ctx.kind, ctx.spec, ctx.trigger, n_train, n_test, layers, classes)


def train_images(run_dir: str, indices: Sequence[int]) -> tuple[list[torch.Tensor], list[int | None]]:
    """uint8 (C, H, W) images and labels (None when unknown) of training samples: those kept at the
    end of the run when all of them are, else from the rebuilt training set."""
    kept = _kept_train(run_dir)
    if all(i in kept for i in indices):
        return [torch.from_numpy(kept[i][0]) for i in indices], [kept[i][1] for i in indices]
    train = run_context(run_dir).train
    if train is None:
        raise InputError("This audit was run without a training set: there are no training samples to show")
    labels = [None if train.labels is None else int(train.labels[i]) for i in indices]
    return [train.images[i] for i in indices], labels


@st.cache_resource(show_spinner=False, max_entries=8)
def _kept_train(run_dir: str) -> dict[int, tuple[np.ndarray, int | None]]:
    return top_images(run_dir)


@st.cache_resource(show_spinner=False, max_entries=12)
def run_model(run_dir: str, name: str) -> tuple[nn.Module, ModelSpec]:
    """A model of the job's run: its own `models/<name>.safetensors` first (a refine job's fine-tuned
    model lives there, while its context is the source run's), else the context's."""
    own = Path(run_dir) / "models" / f"{name}.safetensors"
    if name != "teacher" and own.exists():
        return load_model(own, None, "cpu")
    if name == "teacher":
        teacher = views.load_teacher(run_dir)  # without decoding the run's image sets
        if teacher is not None:
            return teacher
    return run_context(run_dir).model(name)


def model_names(run_dir: str) -> list[str]:
    """teacher first, then student / finetuned where the run (or its source run) saved them."""
    dirs = (Path(run_dir), run_view(run_dir).run_dir)
    return ["teacher"] + [
        n for n in ("student", "finetuned") if any((d / "models" / f"{n}.safetensors").exists() for d in dirs)
    ]


def teacher_layers(run_dir: str) -> dict:
    """`layer_report` of the run's teacher: its conv layers in run order and the spec's (or the automatic) choice."""
    return run_view(run_dir).layers


@st.cache_resource
def _compute_lock() -> threading.Lock:
    return threading.Lock()


def model_label(name: str) -> str:
    return MODEL_LABELS.get(name, name)


# ── computations: stored at the end of the run for the default view, else computed ──────────────


@st.cache_data(show_spinner=False, max_entries=64)
def gradcam_panels(
    run_dir: str, model_name: str, images: np.ndarray, chosen: tuple[int | None, ...], layer: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For uint8 images (N, C, H, W): softmax probabilities (N, K) and Grad-CAM overlays
    (N, H, W, 3) uint8 for the predicted class and for `chosen` (None entries: predicted), at the
    conv layer `layer` (None: the spec's choice)."""
    kept = stored(run_dir, gradcam_key(model_name, layer, images, chosen))
    if kept is not None:
        return kept["probs"], kept["over_pred"], kept["over_chosen"]
    model, spec = run_model(run_dir, model_name)
    with _compute_lock():
        return views.gradcam_panels(model, at_layer(spec, layer), images, chosen)


@st.cache_data(show_spinner=False, max_entries=64)
def predictions(run_dir: str, model_name: str, images: np.ndarray) -> np.ndarray:
    """float32 (N, K): softmax probabilities of one of the run's models on uint8 images (N, C, H, W), one pass."""
    model, spec = run_model(run_dir, model_name)
    with _compute_lock():
        return torch.softmax(predict_logits(model, spec, torch.from_numpy(images), views.CPU), dim=1).numpy()


def norm_sample(ctx: RunContext, max_images: int = NORM_IMAGES, seed: int = 0) -> torch.Tensor:
    """Up to `max_images` test images of the run the trigger should flip (`kdcore.views.norm_sample`)."""
    return views.norm_sample(ctx.test, ctx.trigger, max_images, seed)


@st.cache_data(show_spinner=False, max_entries=16)
def norm_stats(
    run_dir: str,
    models: tuple[str, ...],
    max_images: int = NORM_IMAGES,
    layer: str | None = None,
    trigger_json: str = "",
) -> dict[str, dict[str, NormStats]]:
    """{model: {"clean": NormStats, "triggered": NormStats}} of post-ReLU last-conv-block activations
    (seed 004, fig. 4; `ACT_ROLE` of conv layer `layer`); "triggered" only when the run's trigger is known.
    `trigger_json`: another trigger's `to_dict()` as JSON (the recovered one), "" = the run's."""
    kept = stored_norms(run_dir, norms_key(models, layer, max_images, trigger_json))
    if kept is not None:
        return kept
    ctx = test_context(run_dir)  # not run_context: the training set is not needed here
    if trigger_json:
        ctx = dataclasses.replace(ctx, trigger=Trigger.from_dict(json.loads(trigger_json)))
    clean = norm_sample(ctx, max_images)
    loaded = {m: (model, at_layer(spec, layer)) for m in models for model, spec in [run_model(run_dir, m)]}
    with _compute_lock():
        return compare_norms(loaded, clean, ctx.trigger, role=ACT_ROLE, relu=True)


@st.cache_data(show_spinner=False, max_entries=64)
def layer_activations(run_dir: str, model_name: str, images: np.ndarray, layer: str | None = None) -> np.ndarray:
    """float32 (N, C, h, w): post-ReLU activations (`ACT_ROLE` of conv layer `layer`, None: the spec's
    choice) of uint8 images (N, C, H, W)."""
    kept = stored(run_dir, activations_key(model_name, layer, images))
    if kept is not None:
        return kept["acts"]
    model, spec = run_model(run_dir, model_name)
    with _compute_lock():
        return views.layer_activations(model, at_layer(spec, layer), images)


# ── figures ──────────────────────────────────────────────────────────────────────────────────────


def upscale(img: np.ndarray, size: int = 224) -> np.ndarray:
    """Nearest-neighbour enlarge (H, W[, 3]) so 8×8 or 28×28 pixels stay crisp in the browser."""
    k = max(1, round(size / img.shape[0]))
    return img.repeat(k, axis=0).repeat(k, axis=1)


def as_display(image_u8: np.ndarray) -> np.ndarray:
    """(C, H, W) → (H, W) for grey, (H, W, 3) for colour."""
    return image_u8[0] if image_u8.shape[0] == 1 else image_u8.transpose(1, 2, 0)


def _norm_values(s: NormStats | Mapping[str, Sequence[float]], norm: str) -> np.ndarray:
    return np.asarray(s[norm] if isinstance(s, Mapping) else getattr(s, norm), dtype=float)


NORM_BINS = 30


def norm_histograms_svg(stats: Mapping[str, Mapping[str, NormStats | Mapping]]) -> dict[str, dict[str, str]]:
    """{model: {norm: SVG}}: per model (a row on the page) and ℓ1 / ℓ2 / ℓ∞ (its columns), the clean
    and triggered histograms overlaid (`app.svg`, drawn without chart code), in NORM_BINS bins over
    both conditions' range. Every facet has its own scale: ℓ1 runs in the thousands where ℓ∞ is a
    few units.

    `stats` is `norm_stats`' {model: {condition: NormStats or its to_dict()}}."""
    if not stats:
        raise ValueError("norm_histograms_svg needs at least one model's statistics")
    out: dict[str, dict[str, str]] = {}
    for m, conds in stats.items():
        out[m] = {}
        for norm in NORMS:
            values = {cond: _norm_values(s, norm) for cond, s in conds.items()}
            every = np.concatenate(list(values.values()))
            lo, hi = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
            if hi <= lo:  # one value (a dead layer): a bin around it
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.linspace(lo, hi, NORM_BINS + 1)
            series = [
                Bars(cond, np.histogram(v, bins=edges)[0].tolist(), COND_COLORS.get(cond, "#7f7f7f"))
                for cond, v in values.items()
            ]
            title = f"{model_label(m)} · {NORM_LABELS[norm]}"
            out[m][norm] = histogram_svg(
                edges, series, stacked=False, x_title=NORM_LABELS[norm], unit="images", title=title, width=380
            )
    return out


def _tile(act: np.ndarray) -> np.ndarray:
    """(C, h, w) → a grid of the channels about twice as wide as tall (32 → 4×8), NaN between tiles."""
    c, h, w = act.shape
    cols = min(c, math.ceil(math.sqrt(2 * c)))
    rows = math.ceil(c / cols)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, dtype=np.float32)
    for k in range(c):
        y, x = (k // cols) * (h + 1), (k % cols) * (w + 1)
        grid[y : y + h, x : x + w] = act[k]
    return grid


VIRIDIS = colour_lut(sequential.Viridis)
GAP_RGB = (255, 255, 255)  # between tiles


def activation_map_image(act: np.ndarray, zmax: float | None = None, width: int = 360) -> np.ndarray:
    """One Viridis tile per channel of an activation tensor (C, h, w), as an RGB image (H, W, 3)
    uint8 about `width` pixels wide (seed 004, fig. 3). An image, not a chart: it is drawn at once,
    with no charting code to load in the browser.

    zmax: the value drawn yellow; pass the same value to images that should be compared."""
    act = np.asarray(act, dtype=np.float32)
    if act.ndim != 3 or act.shape[0] == 0:
        raise ValueError(f"activation_map_image needs an activation tensor (C, h, w); got shape {act.shape}")
    grid = _tile(act)
    lo = min(0.0, float(act.min()))
    top = float(act.max()) if zmax is None else float(zmax)
    span = top - lo if top > lo else 1.0
    level = np.clip((np.nan_to_num(grid, nan=lo) - lo) / span, 0.0, 1.0)
    rgb = VIRIDIS[np.round(level * 255).astype(np.intp)]
    rgb[np.isnan(grid)] = GAP_RGB
    k = max(1, round(width / grid.shape[1]))
    return rgb.repeat(k, axis=0).repeat(k, axis=1)


def most_driven_channels(clean: np.ndarray, triggered: np.ndarray, n: int = 3) -> list[tuple[int, float, float]]:
    """The `n` channels whose peak activation the trigger raises most: (channel, clean peak,
    triggered peak), from one image's activations (C, h, w) without and with the trigger."""
    a = np.asarray(clean, dtype=np.float32).reshape(len(clean), -1).max(axis=1)
    b = np.asarray(triggered, dtype=np.float32).reshape(len(triggered), -1).max(axis=1)
    order = np.argsort(a - b, kind="stable")[:n]  # largest rise first
    return [(int(c), float(a[c]), float(b[c])) for c in order]
