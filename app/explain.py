"""The Explain page's logic: Grad-CAM and last-conv activations of a run's models (seed 004: Cheng et
al., "Defending against Backdoor Attack on Deep Neural Networks", AdvML@KDD 2019, figs. 2–4).

1. Rebuild the run (`run_context`, cached once per run directory) and load its models (`run_model`).
2. Pick up to 4 images: top poison candidates, test images or uploads (`pick_images_ui`).
3. Grad-CAM of the last conv layer for each image, clean and with the known trigger, for the
   predicted class and a chosen one (true label or trigger target), teacher vs student
   (`gradcam_grid_ui`; fig. 2 minus the synthetic trigger, which kdcore does not make yet).
4. ℓ1 / ℓ2 / ℓ∞ norms of the last conv block's post-ReLU activations on up to 500 test images of
   non-target classes, clean vs triggered (`norm_stats` → `norm_histograms_figure`, fig. 4).
5. One image's activations, one tile per channel (`activation_map_figure`, fig. 3).

Figures are pure (values in, `go.Figure` out); `*_ui` functions draw and return what was chosen.
Models are shared by every session (st.cache_resource), and Grad-CAM hooks and freezes the model
it runs on, so every model computation holds `_compute_lock()`.
"""

from __future__ import annotations

import csv
import io
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from PIL import Image
from plotly.subplots import make_subplots
from torch import nn

from app.charts import MODEL_LABELS
from kdcore.errors import InputError
from kdcore.explain import NORMS, NormStats, activation_norms, activations, gradcam, last_conv_layer, overlay
from kdcore.models.loading import load_model
from kdcore.models.spec import ModelSpec
from kdcore.runs.context import RunContext, load_context
from kdcore.train import predict_logits

SOURCES = ("Top poison candidates", "Test images", "Upload images")
MAX_PICK = 4  # images in the Grad-CAM grid
POOL = 12  # images offered to pick from
NORM_IMAGES = 500  # test images behind the ℓp-norm histograms
NORM_LABELS = {"l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}
COND_COLORS = {"clean": "#2ca02c", "triggered": "#1f77b4"}  # seed 004 fig. 4: green clean, blue + trigger
TARGET_MODES = {"target": "Trigger target", "true": "True label", "class": "Another class"}
SYNTHETIC_NOTE = (
    "Seed 004 (fig. 2) also shows a *synthetic* trigger reverse-engineered with Neural Cleanse "
    "(clean + syn, clean + ori + syn). kdcore cannot synthesise triggers yet, so those inputs are not shown."
)


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


@st.cache_resource
def _compute_lock() -> threading.Lock:
    return threading.Lock()


def activation_layer(model: nn.Module) -> nn.Module:
    """The ReLU right after the last conv layer (post-ReLU activations, as seed 004 plots them),
    or the last conv itself when no ReLU follows it (e.g. BatchNorm in between)."""
    conv = last_conv_layer(model)
    after = False
    for m in model.modules():
        if after:
            if isinstance(m, nn.Sequential):  # a container opening after the conv: look inside it
                continue
            return m if isinstance(m, nn.ReLU) else conv
        after = m is conv
    return conv


# ── choosing images ──────────────────────────────────────────────────────────────────────────────


def _keep_valid(key: str, options: Sequence) -> None:
    """Drop a widget's remembered value that the current options no longer contain."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


@st.cache_data(show_spinner=False, max_entries=8)
def read_candidates(path: str, n: int = POOL) -> list[dict]:
    """Top `n` rows of a candidates.csv, flagged first, then by rank."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: (r.get("flagged") != "1", int(r["rank"])))
    return rows[:n]


def _candidates_path(ctx: RunContext, run_dir: str) -> Path | None:
    for d in (Path(run_dir), ctx.run_dir):  # a refine job ranks nothing itself; use its source run's
        if (d / "candidates.csv").exists():
            return d / "candidates.csv"
    return None


def decode_upload(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """PNG/JPEG bytes → uint8 (C, H, W) at the model's input shape (alpha flattened onto black,
    bilinear resize, as `kdcore.data.folders` loads training images)."""
    c, h, w = shape
    with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as img:
        img.load()
        if "transparency" in img.info or any(b in ("A", "a") for b in img.getbands()):
            img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img.convert("RGBA"))
        img = img.convert("L" if c == 1 else "RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.array(img, dtype=np.uint8)  # (H, W) or (H, W, 3)
    return arr.reshape(h, w, c).transpose(2, 0, 1).copy()


def _class_name(spec: ModelSpec, c: int | None) -> str:
    if c is None:
        return "?"
    names = spec.names
    return f"{c} ({names[c]})" if c < len(names) and names[c] != str(c) else str(c)


def pick_images_ui(ctx: RunContext, run_dir: str) -> tuple[torch.Tensor, list[int | None], list[str]]:
    """Choose up to 4 images → (uint8 (N, C, H, W), labels (None when unknown), captions)."""
    cand_path = _candidates_path(ctx, run_dir) if ctx.train is not None else None
    sources = [s for s, ok in zip(SOURCES, (cand_path is not None, ctx.test is not None, True), strict=True) if ok]
    _keep_valid("explain_source", sources)
    source = st.radio("Images", sources, horizontal=True, key="explain_source")
    shape = ctx.spec.input_shape
    images: list[torch.Tensor] = []
    labels: list[int | None] = []
    captions: list[str] = []
    if source == SOURCES[0]:
        for r in read_candidates(str(cand_path)):
            i = int(r["index"])
            if not 0 <= i < len(ctx.train):
                raise InputError(f"candidates.csv lists training sample {i} but the training set has {len(ctx.train)}")
            label = None if ctx.train.labels is None else int(ctx.train.labels[i])
            flag = " · flagged" if r.get("flagged") == "1" else ""
            images.append(ctx.train.images[i])
            labels.append(label)
            captions.append(f"#{r['rank']} train[{i}] label {_class_name(ctx.spec, label)}{flag}")
    elif source == SOURCES[1]:
        test_labels = ctx.test.labels
        choices = ["All classes", *range(ctx.spec.num_classes)] if test_labels is not None else ["All classes"]
        _keep_valid("explain_test_class", choices)
        cls = st.selectbox(
            "Class",
            choices,
            key="explain_test_class",
            format_func=lambda c: c if isinstance(c, str) else _class_name(ctx.spec, c),
        )
        idx = torch.arange(len(ctx.test)) if isinstance(cls, str) else torch.nonzero(test_labels == cls).flatten()
        if len(idx) == 0:
            st.info("The test set has no image of this class.")
            return torch.zeros((0, *shape), dtype=torch.uint8), [], []
        if st.session_state.get("explain_test_start", len(idx)) >= len(idx):
            st.session_state["explain_test_start"] = 0  # the default, set here so it can be reset too
        start = st.number_input(f"First image (of {len(idx)})", 0, len(idx) - 1, step=POOL, key="explain_test_start")
        for i in idx[start : start + POOL].tolist():
            label = None if test_labels is None else int(test_labels[i])
            images.append(ctx.test.images[i])
            labels.append(label)
            captions.append(f"test[{i}] label {_class_name(ctx.spec, label)}")
    else:
        files = st.file_uploader(
            "PNG or JPEG images", type=["png", "jpg", "jpeg"], accept_multiple_files=True, key="explain_upload"
        )
        bad = []
        for f in (files or [])[:POOL]:
            try:
                images.append(torch.from_numpy(decode_upload(f.getvalue(), shape)))
            except (OSError, ValueError, Image.DecompressionBombError):
                bad.append(f.name)
                continue
            labels.append(None)
            captions.append(f"upload {len(captions) + 1}: {f.name}")
        if bad:
            st.warning(f"Could not read {len(bad)} file(s) as PNG/JPEG: {', '.join(bad[:5])}")
    if not images:
        if source == SOURCES[2]:
            st.info(f"Upload images; they are converted to the model's input {shape} (C, H, W).")
        return torch.zeros((0, *shape), dtype=torch.uint8), [], []
    chosen = _pick_ui(captions)
    if not chosen:
        return torch.zeros((0, *shape), dtype=torch.uint8), [], []
    return torch.stack([images[p] for p in chosen]), [labels[p] for p in chosen], [captions[p] for p in chosen]


def _pick_ui(captions: list[str]) -> list[int]:
    """Multiselect of up to 4 captions → their positions. Options are the captions themselves (the
    browser shows chips by label), and a new pool of images starts again from its first two."""
    if st.session_state.get("_explain_pool") != captions or "explain_pick" not in st.session_state:
        st.session_state["_explain_pool"] = captions
        kept = [c for c in st.session_state.get("explain_pick", []) if c in captions]
        st.session_state["explain_pick"] = kept or captions[:2]
    picked = st.multiselect(f"Show (up to {MAX_PICK})", captions, max_selections=MAX_PICK, key="explain_pick")
    return [captions.index(c) for c in picked]


def compare_model_ui(run_dir: str) -> list[str]:
    """["teacher", the student or fine-tuned model chosen], or ["teacher"] when the run has neither."""
    others = [n for n in model_names(run_dir) if n != "teacher"]
    if not others:
        st.info("This run saved no distilled or fine-tuned model; showing the teacher only.")
        return ["teacher"]
    _keep_valid("explain_model", others)
    other = st.selectbox("Compare the teacher with", others, format_func=_model_label, key="explain_model")
    return ["teacher", other]


def target_mode_ui(ctx: RunContext) -> str | int:
    """The second class each Grad-CAM explains: "target", "true" or a class index."""
    modes = [m for m in TARGET_MODES if m != "target" or ctx.trigger is not None]
    _keep_valid("explain_target_mode", modes)
    mode = st.radio(
        "Second map explains",
        modes,
        format_func=TARGET_MODES.get,
        horizontal=True,
        key="explain_target_mode",
        help="The first map of each model explains the class it predicts.",
    )
    if mode != "class":
        return mode
    return st.selectbox(
        "Class", range(ctx.spec.num_classes), format_func=lambda c: _class_name(ctx.spec, c), key="explain_target_class"
    )


# ── Grad-CAM ─────────────────────────────────────────────────────────────────────────────────────


def _model_label(name: str) -> str:
    return MODEL_LABELS.get(name, name)


def _chosen_class(mode: str | int, label: int | None, ctx: RunContext) -> int | None:
    """The class of the second map; None (= the predicted class) when the label is unknown."""
    if mode == "target" and ctx.trigger is not None:
        return ctx.trigger.target
    if mode == "true":
        return label
    return mode if isinstance(mode, int) else label


@st.cache_data(show_spinner=False, max_entries=64)
def gradcam_panels(
    run_dir: str, model_name: str, images: np.ndarray, chosen: tuple[int | None, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For uint8 images (N, C, H, W): softmax probabilities (N, K) and Grad-CAM overlays
    (N, H, W, 3) uint8 for the predicted class and for `chosen` (None entries: predicted)."""
    model, spec = run_model(run_dir, model_name)
    x = torch.from_numpy(images)
    with _compute_lock():
        probs = torch.softmax(predict_logits(model, spec, x, torch.device("cpu")), dim=1).numpy()
        cams_pred = gradcam(model, spec, x, None)  # (N, H, W)
        cams_chosen = gradcam(model, spec, x, list(chosen))
    over_pred = np.stack([overlay(images[i], cams_pred[i]) for i in range(len(images))])
    over_chosen = np.stack([overlay(images[i], cams_chosen[i]) for i in range(len(images))])
    return probs, over_pred, over_chosen


def _upscale(img: np.ndarray, size: int = 224) -> np.ndarray:
    """Nearest-neighbour enlarge (H, W[, 3]) so 8×8 or 28×28 pixels stay crisp in the browser."""
    k = max(1, round(size / img.shape[0]))
    return img.repeat(k, axis=0).repeat(k, axis=1)


def _as_display(image_u8: np.ndarray) -> np.ndarray:
    """(C, H, W) → (H, W) for grey, (H, W, 3) for colour."""
    return image_u8[0] if image_u8.shape[0] == 1 else image_u8.transpose(1, 2, 0)


def gradcam_grid_ui(
    ctx: RunContext,
    images: torch.Tensor,
    labels: Sequence[int | None],
    models: Sequence[str],
    target_mode: str | int,
    captions: Sequence[str] | None = None,
    run_dir: str | None = None,
) -> None:
    """Per image a bordered block, one row per input (clean, + trigger when known): the input, then
    per model the Grad-CAM of the predicted class and of the chosen class, with probabilities."""
    run_dir = run_dir or str(ctx.run_dir)
    n = len(images)
    inputs = [("clean", images)]
    if ctx.trigger is not None:
        inputs.append(("+ trigger", ctx.trigger.stamp(images)))
    stacked = torch.cat([x for _, x in inputs]).numpy()  # (R·N, C, H, W): row r, image i at r·N + i
    chosen = tuple(_chosen_class(target_mode, lab, ctx) for lab in labels) * len(inputs)
    with st.spinner("Computing Grad-CAM…"):
        panels = {m: gradcam_panels(run_dir, m, stacked, chosen) for m in models}
    second = {"target": "trigger target", "true": "true label"}.get(target_mode, f"class {target_mode}")
    heads = ["input"] + [f"**{_model_label(m)}** · {h}" for m in models for h in ("predicted", second)]
    for col, head in zip(st.columns(len(heads)), heads, strict=True):
        col.markdown(head)
    for i in range(n):
        with st.container(border=True):
            if captions:
                st.caption(captions[i])
            for r, (what, _) in enumerate(inputs):
                j = r * n + i
                cols = st.columns(len(heads))
                true = "" if labels[i] is None else f" · label {_class_name(ctx.spec, labels[i])}"
                cols[0].image(_upscale(_as_display(stacked[j])), caption=f"{what}{true}", width="stretch")
                for m_i, m in enumerate(models):
                    probs, over_pred, over_chosen = panels[m]
                    pred = int(probs[j].argmax())
                    c = chosen[j] if chosen[j] is not None else pred
                    cols[1 + 2 * m_i].image(
                        _upscale(over_pred[j]),
                        caption=f"→ {_class_name(ctx.spec, pred)} ({probs[j, pred]:.0%})",
                        width="stretch",
                    )
                    cols[2 + 2 * m_i].image(
                        _upscale(over_chosen[j]),
                        caption=f"{_class_name(ctx.spec, c)}: p = {probs[j, c]:.0%}",
                        width="stretch",
                    )
    if ctx.trigger is None:
        st.caption("This run has no known trigger, so only clean inputs are shown.")
    else:
        st.caption(
            f"Rows: the clean image and the same image with the run's trigger (target "
            f"{_class_name(ctx.spec, ctx.trigger.target)}). {SYNTHETIC_NOTE}"
        )


# ── activations and their norms ──────────────────────────────────────────────────────────────────


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
def norm_stats(run_dir: str, models: tuple[str, ...], max_images: int = NORM_IMAGES) -> dict[str, dict[str, NormStats]]:
    """{model: {"clean": NormStats, "triggered": NormStats}} of post-ReLU last-conv activations
    (seed 004, fig. 4); "triggered" only when the run's trigger is known."""
    ctx = run_context(run_dir)
    clean = norm_sample(ctx, max_images)
    inputs = {"clean": clean}
    if ctx.trigger is not None:
        inputs["triggered"] = ctx.trigger.stamp(clean)
    out: dict[str, dict[str, NormStats]] = {}
    for m in models:
        model, spec = run_model(run_dir, m)
        with _compute_lock():
            out[m] = {k: activation_norms(model, spec, x, layer=activation_layer(model)) for k, x in inputs.items()}
    return out


@st.cache_data(show_spinner=False, max_entries=64)
def layer_activations(run_dir: str, model_name: str, images: np.ndarray) -> np.ndarray:
    """float32 (N, C, h, w): post-ReLU last-conv activations of uint8 images (N, C, H, W)."""
    model, spec = run_model(run_dir, model_name)
    with _compute_lock():
        return activations(model, spec, torch.from_numpy(images), layer=activation_layer(model)).numpy()


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
        row_titles=[_model_label(m) for m in names],
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
                        hovertemplate=f"{_model_label(m)} · {cond}<br>{NORM_LABELS[norm]} %{{x}}<br>"
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


def activation_maps_ui(
    ctx: RunContext, images: torch.Tensor, captions: Sequence[str], models: Sequence[str], run_dir: str
) -> None:
    """One chosen image's activation maps: a column per model, rows clean / + trigger, one colour
    scale per model so clean and triggered read on the same scale."""
    _keep_valid("explain_act_image", captions)
    pick = list(captions).index(st.selectbox("Image", captions, key="explain_act_image"))
    x = images[pick : pick + 1]
    inputs = {"clean": x}
    if ctx.trigger is not None:
        inputs["+ trigger"] = ctx.trigger.stamp(x)
    stacked = torch.cat(list(inputs.values())).numpy()  # (R, C, H, W)
    with st.spinner("Computing activations…"):
        acts = {m: layer_activations(run_dir, m, stacked) for m in models}
    for col, m in zip(st.columns(len(models)), models, strict=True):
        top = float(acts[m].max())
        for r, what in enumerate(inputs):
            col.plotly_chart(
                activation_map_figure(acts[m][r], zmax=top, title=f"{_model_label(m)} · {what}"),
                key=f"explain_act_{m}_{r}",
            )
    c = acts[models[0]].shape[1]
    st.caption(f"{c} channels of the last conv block after its ReLU; each tile is one channel's map.")
