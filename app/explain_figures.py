"""The Explain page's models, cached computations and figures (seed 004: Cheng et al., "Defending
against Backdoor Attack on Deep Neural Networks", AdvML@KDD 2019, figs. 2–4).

- Loading: the run's context and models, cached once per run directory (`run_context`, `run_model`).
- Computations, cached per input: Grad-CAM panels (`gradcam_panels`), the ℓp norms of the
  activations clean vs triggered (`norm_stats`, through `kdcore.explain.compare_norms`) and one
  image's activation maps (`layer_activations`). Activations are measured where ℓ∞ pruning
  measures them: `ACT_ROLE` ("conv_activation": the BatchNorm that consumes the last conv, else
  the conv) after a ReLU, so the page and the defense talk about the same neurons.
- Figures are pure (values in, `go.Figure` out): `norm_histograms_figure` (fig. 4),
  `activation_map_figure` (fig. 3).

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
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.subplots import make_subplots
from torch import nn

from app.charts import MODEL_LABELS
from kdcore.errors import InputError
from kdcore.explain import NORMS, NormStats, activations, compare_norms, gradcam, overlay
from kdcore.models.layers import Role, choose_layer, layer_report
from kdcore.models.loading import load_model
from kdcore.models.spec import ModelSpec
from kdcore.runs.context import RunContext, load_context
from kdcore.train import predict_logits
from kdcore.triggers import Trigger

NORM_IMAGES = 500  # test images behind the ℓp-norm histograms
NORM_LABELS = {"l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}
COND_COLORS = {"clean": "#2ca02c", "triggered": "#1f77b4"}  # seed 004 fig. 4: green clean, blue + trigger
ACT_ROLE: Role = "conv_activation"  # with relu=True: relu(bn(last conv)) or relu(last conv), as ℓ∞ pruning


# ── loading ──────────────────────────────────────────────────────────────────────────────────────


@st.cache_resource(show_spinner="Loading the run's models and data…", max_entries=4)
def run_context(run_dir: str) -> RunContext:
    return load_context(run_dir, device="cpu")


@st.cache_resource(show_spinner=False, max_entries=12)
def run_model(run_dir: str, name: str) -> tuple[nn.Module, ModelSpec]:
    """A model of the job's run: its own `models/<name>.safetensors` first (a refine job's fine-tuned
    model lives there, while its context is the source run's), else the context's."""
    own = Path(run_dir) / "models" / f"{name}.safetensors"
    if name != "teacher" and own.exists():
        return load_model(own, None, "cpu")
    return run_context(run_dir).model(name)


def model_names(run_dir: str) -> list[str]:
    """teacher first, then student / finetuned where the run (or its source run) saved them."""
    ctx_names = run_context(run_dir).available_models()
    own = [n for n in ("student", "finetuned") if (Path(run_dir) / "models" / f"{n}.safetensors").exists()]
    return ["teacher"] + [n for n in ("student", "finetuned") if n in ctx_names or n in own]


@st.cache_resource(show_spinner=False, max_entries=12)
def teacher_layers(run_dir: str) -> dict:
    """`layer_report` of the run's teacher: its conv layers in run order and the spec's (or the automatic) choice."""
    ctx = run_context(run_dir)
    with _compute_lock():
        return layer_report(ctx.teacher, ctx.spec)


def at_layer(spec: ModelSpec, layer: str | None) -> ModelSpec:
    """`spec` with `layer` as its last conv (`choose_layer` then uses it for every role built on it)."""
    return (
        spec
        if layer is None or spec.layers.get("last_conv") == layer
        else spec.replace(layers={**spec.layers, "last_conv": layer})
    )


@st.cache_resource
def _compute_lock() -> threading.Lock:
    return threading.Lock()


def model_label(name: str) -> str:
    return MODEL_LABELS.get(name, name)


# ── computations ─────────────────────────────────────────────────────────────────────────────────


@st.cache_data(show_spinner=False, max_entries=64)
def gradcam_panels(
    run_dir: str, model_name: str, images: np.ndarray, chosen: tuple[int | None, ...], layer: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For uint8 images (N, C, H, W): softmax probabilities (N, K) and Grad-CAM overlays
    (N, H, W, 3) uint8 for the predicted class and for `chosen` (None entries: predicted), at the
    conv layer `layer` (None: the spec's choice)."""
    model, spec = run_model(run_dir, model_name)
    spec = at_layer(spec, layer)
    x = torch.from_numpy(images)
    with _compute_lock():
        probs = torch.softmax(predict_logits(model, spec, x, torch.device("cpu")), dim=1).numpy()
        cams_pred = gradcam(model, spec, x, None)  # (N, H, W)
        cams_chosen = gradcam(model, spec, x, list(chosen))
    over_pred = np.stack([overlay(images[i], cams_pred[i]) for i in range(len(images))])
    over_chosen = np.stack([overlay(images[i], cams_chosen[i]) for i in range(len(images))])
    return probs, over_pred, over_chosen


def norm_sample(ctx: RunContext, max_images: int = NORM_IMAGES, seed: int = 0) -> torch.Tensor:
    """Up to `max_images` test images (uint8 (N, C, H, W)) the trigger should flip (non-target
    classes; all classes when there is no trigger), a fixed random sample in test-set order."""
    if ctx.test is None:
        raise InputError("This run has no test set, so there are no images to measure activations on")
    keep = torch.ones(len(ctx.test), dtype=torch.bool)
    if ctx.trigger is not None and ctx.test.labels is not None:
        keep = ctx.trigger.victims(ctx.test.labels)
    idx = torch.nonzero(keep).flatten()
    if len(idx) > max_images:
        g = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(len(idx), generator=g)[:max_images]].sort().values
    return ctx.test.images[idx]


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
    ctx = run_context(run_dir)
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
    model, spec = run_model(run_dir, model_name)
    spec = at_layer(spec, layer)
    with _compute_lock():
        layer = choose_layer(model, spec, ACT_ROLE)[1]
        return activations(model, spec, torch.from_numpy(images), layer, relu=True).numpy()


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


def norm_histograms_figure(stats: Mapping[str, Mapping[str, NormStats | Mapping]]) -> go.Figure:
    """Rows = models, columns = ℓ1 / ℓ2 / ℓ∞; clean and triggered histograms overlaid per facet.

    `stats` is `norm_stats`' {model: {condition: NormStats or its to_dict()}}. Every facet has its
    own x and y axes: ℓ1 runs in the thousands where ℓ∞ is a few units.
    """
    names = list(stats)
    if not names:
        raise ValueError("norm_histograms_figure needs at least one model's statistics")
    fig = make_subplots(
        rows=len(names),
        cols=len(NORMS),
        shared_xaxes=False,
        shared_yaxes=False,
        column_titles=[NORM_LABELS[n] for n in NORMS],
        row_titles=[model_label(m) for m in names],
        horizontal_spacing=0.06,
        vertical_spacing=0.12 if len(names) > 1 else 0.0,
    )
    legend_done: set[str] = set()
    for r, m in enumerate(names, start=1):
        for c, norm in enumerate(NORMS, start=1):
            for cond, s in stats[m].items():
                fig.add_trace(
                    go.Histogram(
                        x=_norm_values(s, norm),
                        name=cond,
                        legendgroup=cond,
                        showlegend=cond not in legend_done,
                        marker_color=COND_COLORS.get(cond),
                        opacity=0.6,
                        nbinsx=30,
                        meta=[m, norm, cond],
                        hovertemplate=f"{model_label(m)} · {cond}<br>{NORM_LABELS[norm]} %{{x}}<br>"
                        "%{y} images<extra></extra>",
                    ),
                    row=r,
                    col=c,
                )
                legend_done.add(cond)
    fig.update_layout(
        barmode="overlay",
        height=80 + 240 * len(names),
        margin=dict(l=10, r=30, t=40, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.04, x=1, xanchor="right"),
    )
    fig.update_yaxes(title_text="images", col=1)
    return fig


def _tile(act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) → (grid, channel): channels tiled about twice as wide as tall (32 → 4×8), one NaN
    pixel between tiles; `channel` holds each pixel's channel index (-1 in the gaps)."""
    c, h, w = act.shape
    cols = min(c, math.ceil(math.sqrt(2 * c)))
    rows = math.ceil(c / cols)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, dtype=np.float32)
    channel = np.full(grid.shape, -1, dtype=np.int64)
    for k in range(c):
        y, x = (k // cols) * (h + 1), (k % cols) * (w + 1)
        grid[y : y + h, x : x + w] = act[k]
        channel[y : y + h, x : x + w] = k
    return grid, channel


def activation_map_figure(act: np.ndarray, zmax: float | None = None, title: str = "") -> go.Figure:
    """One heatmap tile per channel of an activation tensor (C, h, w) (seed 004, fig. 3).

    zmax: top of the colour scale; pass the same value to figures that should be compared.
    """
    act = np.asarray(act, dtype=np.float32)
    if act.ndim != 3 or act.shape[0] == 0:
        raise ValueError(f"activation_map_figure needs an activation tensor (C, h, w); got shape {act.shape}")
    grid, channel = _tile(act)
    top = float(act.max()) if zmax is None else zmax
    fig = go.Figure(
        go.Heatmap(
            z=grid,
            customdata=channel,
            colorscale="Viridis",
            zmin=min(0.0, float(act.min())),
            zmax=top if top > 0 else 1.0,
            hoverongaps=False,
            hovertemplate="channel %{customdata}<br>activation %{z:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    fig.update_layout(title_text=title, margin=dict(l=10, r=10, t=40 if title else 10, b=10), height=260)
    return fig
