"""The Explain page's widgets: Grad-CAM and last-conv activations of a run's models (seed 004: Cheng
et al., "Defending against Backdoor Attack on Deep Neural Networks", AdvML@KDD 2019, figs. 2–4).

1. Rebuild the run and load its models (`app.explain_figures`: `run_context`, `run_model`).
2. Pick up to 4 images: top poison candidates, test images or uploads (`pick_images_ui`; uploads
   are decoded by the data loader's own `decode_image`, in a `kdcore.sandbox` child process).
3. Grad-CAM of the last conv layer for each image, clean and with the known trigger, for the
   predicted class and a chosen one (true label or trigger target), teacher vs student
   (`gradcam_grid_ui`; fig. 2, with the trigger Neural Cleanse recovered when one is chosen:
   `app.recovered_ui.explain_trigger_ui`).
4. ℓ1 / ℓ2 / ℓ∞ norms of the last conv block's post-ReLU activations, the activation ℓ∞ pruning
   scores, on up to 500 test images of non-target classes, clean vs triggered (`norm_stats` →
   `norm_histograms_figure`, fig. 4; the page draws them).
5. One image's activations, one tile per channel (`activation_maps_ui`, fig. 3).

`*_ui` functions draw and return what was chosen; computations and figures live in
`app.explain_figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import streamlit as st
import torch

from app.explain_figures import (
    activation_map_image,
    as_display,
    gradcam_panels,
    layer_activations,
    model_label,
    model_names,
    most_driven_channels,
    run_context,
    teacher_layers,
    train_images,
    upscale,
)
from app.state import show_error
from app.uploads import image_types
from app.words import trigger_in_words
from kdcore import views
from kdcore.candidates import FILE_NAME as CANDIDATES_FILE
from kdcore.candidates import Candidate, read_candidates
from kdcore.errors import InputError, KDCoreError
from kdcore.models.spec import ModelSpec
from kdcore.sandbox import decode_image
from kdcore.views import EXPLAIN_PICKED, RunView, chosen_class

SOURCES = ("Top poison candidates", "Test images", "Upload images")
# What each picked image is, by source: the first word of its caption and the label of its
# unmodified row in the Grad-CAM grid. Never "clean": a training sample's status is unknown.
KINDS = ("poison candidate", "test image", "uploaded image")
MAX_PICK = 4  # images in the Grad-CAM grid
POOL = 12  # images offered to pick from
TARGET_MODES = {"target": "Trigger target", "true": "True label", "class": "Another class"}
RECOVERED_NOTE = (
    "Neural Cleanse can also recover a trigger from the model itself: once it has run on this audit "
    "(Defenses), choose its trigger under “Trigger on the inputs”."
)


# ── choosing images ──────────────────────────────────────────────────────────────────────────────


def _keep_valid(key: str, options: Sequence) -> None:
    """Drop a widget's remembered value that the current options no longer contain."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


@st.cache_data(show_spinner=False, max_entries=8)
def top_candidates(path: str, n: int = POOL) -> tuple[Candidate, ...]:
    """The top `n` rows of a candidates table (already ranked: flagged first, then by score); from
    the rows the run kept at its end (`kdcore.views`) when its view is current."""
    return views.top_candidates(Path(path).parent, n) or read_candidates(path)[:n]


def _candidates_path(ctx: RunView, run_dir: str) -> Path | None:
    for d in (Path(run_dir), ctx.run_dir):  # a refine job ranks nothing itself; use its source run's
        if (d / CANDIDATES_FILE).exists():
            return d / CANDIDATES_FILE
    return None


def _class_name(spec: ModelSpec, c: int | None) -> str:
    if c is None:
        return "?"
    names = spec.names
    return f"{c} ({names[c]})" if c < len(names) and names[c] != str(c) else str(c)


def pick_images_ui(ctx: RunView, run_dir: str) -> tuple[torch.Tensor, list[int | None], list[str]]:
    """Choose up to 4 images → (uint8 (N, C, H, W), labels (None when unknown), captions).

    Top candidates' images come from what the run kept at its end when it kept them all, so the
    first visit decodes no image set; test images need the rebuilt run."""
    cand_path = _candidates_path(ctx, run_dir) if ctx.has_train else None
    sources = [s for s, ok in zip(SOURCES, (cand_path is not None, ctx.has_test, True), strict=True) if ok]
    _keep_valid("explain_source", sources)
    source = st.radio("Images", sources, horizontal=True, key="explain_source")
    shape = ctx.spec.input_shape
    images: list[torch.Tensor] = []
    labels: list[int | None] = []
    captions: list[str] = []
    if source == SOURCES[0]:
        rows = top_candidates(str(cand_path))
        for r in rows:
            if not 0 <= r.index < ctx.n_train:
                raise InputError(
                    f"candidates.csv lists training sample {r.index} but the training set has {ctx.n_train}"
                )
        images, labels = train_images(run_dir, [r.index for r in rows])
        for r, label in zip(rows, labels, strict=True):
            flag = " · flagged" if r.flagged else ""
            captions.append(f"{KINDS[0]} #{r.rank} · {r.name} · label {_class_name(ctx.spec, label)}{flag}")
    elif source == SOURCES[1]:
        test = run_context(run_dir).test
        test_labels = test.labels
        choices = ["All classes", *range(ctx.spec.num_classes)] if test_labels is not None else ["All classes"]
        _keep_valid("explain_test_class", choices)
        cls = st.selectbox(
            "Class",
            choices,
            key="explain_test_class",
            format_func=lambda c: c if isinstance(c, str) else _class_name(ctx.spec, c),
        )
        idx = torch.arange(len(test)) if isinstance(cls, str) else torch.nonzero(test_labels == cls).flatten()
        if len(idx) == 0:
            st.info("The test set has no image of this class.")
            return torch.zeros((0, *shape), dtype=torch.uint8), [], []
        if st.session_state.get("explain_test_start", len(idx)) >= len(idx):
            st.session_state["explain_test_start"] = 0  # the default, set here so it can be reset too
        start = st.number_input(f"First image (of {len(idx)})", 0, len(idx) - 1, step=POOL, key="explain_test_start")
        for i in idx[start : start + POOL].tolist():
            label = None if test_labels is None else int(test_labels[i])
            images.append(test.images[i])
            labels.append(label)
            captions.append(f"{KINDS[1]} #{i} · label {_class_name(ctx.spec, label)}")
    else:
        files = st.file_uploader("Images", type=image_types(), accept_multiple_files=True, key="explain_upload")
        bad = []
        for f in (files or [])[:POOL]:
            try:
                images.append(decode_image(f.getvalue(), shape, f.name))
            except InputError:
                bad.append(f.name)
                continue
            labels.append(None)
            captions.append(f"{KINDS[2]} {len(captions) + 1} · {f.name}")
        if bad:
            st.warning(f"Could not read {len(bad)} file(s) as images: {', '.join(bad[:5])}")
    if not images:
        if source == SOURCES[2]:
            st.info(f"Upload images; they are converted to the model's input {shape} (C, H, W).")
        return torch.zeros((0, *shape), dtype=torch.uint8), [], []
    chosen = _pick_ui(captions)
    if not chosen:
        return torch.zeros((0, *shape), dtype=torch.uint8), [], []
    return torch.stack([images[p] for p in chosen]), [labels[p] for p in chosen], [captions[p] for p in chosen]


def input_kind(caption: str) -> str:
    """The kind (one of KINDS) a `pick_images_ui` caption starts with; "image" for any other caption."""
    return next((k for k in KINDS if caption.startswith(k)), "image")


def _pick_ui(captions: list[str]) -> list[int]:
    """Multiselect of up to 4 captions → their positions. Options are the captions themselves (the
    browser shows chips by label), and a new pool of images starts again from its first two."""
    if st.session_state.get("_explain_pool") != captions or "explain_pick" not in st.session_state:
        st.session_state["_explain_pool"] = captions
        kept = [c for c in st.session_state.get("explain_pick", []) if c in captions]
        st.session_state["explain_pick"] = kept or captions[:EXPLAIN_PICKED]
    picked = st.multiselect(f"Show (up to {MAX_PICK})", captions, max_selections=MAX_PICK, key="explain_pick")
    return [captions.index(c) for c in picked]


def compare_model_ui(run_dir: str) -> list[str]:
    """["teacher", the student or fine-tuned model chosen], or ["teacher"] when the run has neither."""
    others = [n for n in model_names(run_dir) if n != "teacher"]
    if not others:
        st.info("This run saved no distilled or fine-tuned model; showing the teacher only.")
        return ["teacher"]
    _keep_valid("explain_model", others)
    other = st.selectbox("Compare the teacher with", others, format_func=model_label, key="explain_model")
    return ["teacher", other]


def conv_layer_ui(run_dir: str) -> str | None:
    """The conv layer Grad-CAM and the activation views look at: a select over the teacher's conv
    layers in run order, defaulting to the run's choice (its spec's `layers`, else the automatic one).
    None, with the reason shown, when the model has no conv layer (a ViT, an MLP)."""
    report = teacher_layers(run_dir)
    if report["last_conv"] is None or not report["conv"]:
        st.warning(report["problems"].get("last_conv", "This model has no conv layer."), icon="⚠️")
        return None
    options = report["conv"]
    _keep_valid("explain_layer", options)
    if "explain_layer" not in st.session_state or st.session_state.get("_explain_layer_run") != run_dir:
        st.session_state["_explain_layer_run"] = run_dir
        st.session_state["explain_layer"] = report["last_conv"]
    return st.selectbox(
        "Conv layer (Grad-CAM, activation maps and norms)",
        options,
        key="explain_layer",
        help="In the order the layers run. The default is the run's choice: the layer chosen when the audit "
        "was started, else the last conv layer to run. Activations are taken after a ReLU, at the layer's "
        "BatchNorm when one consumes it (as ℓ∞ pruning measures them).",
    )


def target_mode_ui(ctx: RunView) -> str | int:
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


def gradcam_grid_ui(
    ctx: RunView,
    images: torch.Tensor,
    labels: Sequence[int | None],
    models: Sequence[str],
    target_mode: str | int,
    captions: Sequence[str] | None = None,
    run_dir: str | None = None,
    layer: str | None = None,
) -> None:
    """Per image a bordered block, one row per input (as given, + trigger when known): the input, then
    per model the Grad-CAM (at conv layer `layer`) of the predicted class and of the chosen class,
    with probabilities."""
    run_dir = run_dir or str(ctx.run_dir)
    n = len(images)
    inputs = [("", images)]  # the unmodified row is labelled with each image's kind (see KINDS)
    if ctx.trigger is not None:
        inputs.append(("+ trigger", ctx.trigger.stamp(images)))
    stacked = torch.cat([x for _, x in inputs]).numpy()  # (R·N, C, H, W): row r, image i at r·N + i
    chosen = tuple(chosen_class(target_mode, lab, ctx.trigger) for lab in labels) * len(inputs)
    with st.spinner("Computing Grad-CAM…"):
        panels = {m: gradcam_panels(run_dir, m, stacked, chosen, layer) for m in models}
    second = {"target": "trigger target", "true": "true label"}.get(target_mode, f"class {target_mode}")
    heads = ["input"] + [f"**{model_label(m)}** · {h}" for m in models for h in ("predicted", second)]
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
                what = what or (input_kind(captions[i]) if captions else "image")
                cols[0].image(upscale(as_display(stacked[j])), caption=f"{what}{true}", width="stretch")
                for m_i, m in enumerate(models):
                    probs, over_pred, over_chosen = panels[m]
                    pred = int(probs[j].argmax())
                    c = chosen[j] if chosen[j] is not None else pred
                    cols[1 + 2 * m_i].image(
                        upscale(over_pred[j]),
                        caption=f"→ {_class_name(ctx.spec, pred)} ({probs[j, pred]:.0%})",
                        width="stretch",
                    )
                    cols[2 + 2 * m_i].image(
                        upscale(over_chosen[j]),
                        caption=f"{_class_name(ctx.spec, c)}: p = {probs[j, c]:.0%}",
                        width="stretch",
                    )
    if ctx.trigger is None:
        st.caption("This run has no known trigger, so only clean inputs are shown.")
    else:
        trigger = trigger_in_words(ctx.trigger, ctx.spec.names)
        st.caption(
            f"Rows: the image as given and the same image with the trigger ({trigger})."
            + ("" if ctx.trigger.kind == "recovered" else f" {RECOVERED_NOTE}")
        )


@st.fragment
def gradcam_section_ui(
    ctx: RunView,
    images: torch.Tensor,
    labels: Sequence[int | None],
    models: Sequence[str],
    captions: Sequence[str],
    run_dir: str,
    layer: str | None,
) -> None:
    """`target_mode_ui` and the grid it drives, as a fragment: changing the second map's class
    reruns only this section, not the page (its norms and activation maps stay as they are)."""
    try:
        target_mode = target_mode_ui(ctx)
        gradcam_grid_ui(ctx, images, labels, models, target_mode, captions=captions, run_dir=run_dir, layer=layer)
    except KDCoreError as e:  # a fragment's rerun does not pass through the page's own handler
        show_error(e)


# ── activations and their norms ──────────────────────────────────────────────────────────────────


@st.fragment
def activation_maps_ui(
    ctx: RunView,
    images: torch.Tensor,
    captions: Sequence[str],
    models: Sequence[str],
    run_dir: str,
    layer: str | None = None,
) -> None:
    """One chosen image's activation maps: a column per model, rows clean / + trigger, one colour
    scale per model so clean and triggered read on the same scale. A fragment: picking another image
    reruns only this section."""
    try:
        _activation_maps(ctx, images, captions, models, run_dir, layer)
    except KDCoreError as e:  # a fragment's rerun does not pass through the page's own handler
        show_error(e)


def _activation_maps(
    ctx: RunView, images: torch.Tensor, captions: Sequence[str], models: Sequence[str], run_dir: str, layer: str | None
) -> None:
    _keep_valid("explain_act_image", captions)
    pick = list(captions).index(st.selectbox("Image", captions, key="explain_act_image"))
    x = images[pick : pick + 1]
    inputs = {"clean": x}
    if ctx.trigger is not None:
        inputs["+ trigger"] = ctx.trigger.stamp(x)
    stacked = torch.cat(list(inputs.values())).numpy()  # (R, C, H, W)
    with st.spinner("Computing activations…"):
        acts = {m: layer_activations(run_dir, m, stacked, layer) for m in models}
    cols = st.container(key="explain_act_maps").columns(len(models))
    for col, m in zip(cols, models, strict=True):
        top = float(acts[m].max())  # one colour scale per model: clean and + trigger compare
        for r, what in enumerate(inputs):
            col.image(activation_map_image(acts[m][r], zmax=top), caption=f"{model_label(m)} · {what}", width="stretch")
        col.caption(f"colour: 0 (dark purple) → {top:.3g} (yellow)")
        if len(inputs) > 1:
            rises = ", ".join(f"#{c} {a:.2f} → {b:.2f}" for c, a, b in most_driven_channels(acts[m][0], acts[m][1]))
            col.caption(f"Channels the trigger drives most (peak, clean → + trigger): {rises}")
    c = acts[models[0]].shape[1]
    at = f"`{layer}`" if layer else "the last conv block"
    st.caption(f"{c} channels of {at} after its ReLU; each tile is one channel's map, left to right from channel 0.")
