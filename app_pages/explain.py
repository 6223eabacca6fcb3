"""Explain: where the teacher and the cleaned student look (Grad-CAM) and how a trigger moves their
last-conv activations (ℓp norms, activation maps): seed 004, Cheng et al., AdvML@KDD 2019."""

import json

import streamlit as st

from app.explain import (
    activation_maps_ui,
    compare_model_ui,
    conv_layer_ui,
    gradcam_section_ui,
    pick_images_ui,
)
from app.explain_figures import NORM_IMAGES, norm_histograms_svg, norm_stats, run_view
from app.recovered_ui import explain_trigger_ui
from app.state import job_picker_ui, show_error
from kdcore.errors import KDCoreError

st.title("Explain")
st.caption(
    "A backdoored model looks at the trigger when it predicts the target class, and the trigger drives "
    "a few last-layer neurons far above their clean range (Cheng et al., 2019). Compare the suspect "
    "teacher with the model distilled from it."
)

job = job_picker_ui(kinds=("demo", "audit", "refine"))
if job is None:
    st.stop()

try:
    ctx = explain_trigger_ui(run_view(job.run_dir))
    own_trigger = ctx.trigger is run_view(job.run_dir).trigger
    models = compare_model_ui(job.run_dir)
    layer = conv_layer_ui(job.run_dir)
    if layer is None:  # no conv layer: say so (above) and show none of the conv views
        st.stop()
    images, labels, captions = pick_images_ui(ctx, job.run_dir)

    st.subheader("Grad-CAM: where each model looks")
    if len(images) == 0:
        st.info("Pick at least one image above.")
    else:
        gradcam_section_ui(ctx, images, labels, models, captions, job.run_dir, layer)

    st.subheader("ℓ1, ℓ2 and ℓ∞ norms of the conv layer's activations")
    if not ctx.has_test:
        st.info("This run has no test set, so there are no images to measure the activations on.")
    else:
        with st.spinner(f"Measuring activations on up to {NORM_IMAGES} test images…"):
            chosen = "" if own_trigger or ctx.trigger is None else json.dumps(ctx.trigger.to_dict())
            stats = norm_stats(job.run_dir, tuple(models), layer=layer, trigger_json=chosen)
        with st.container(key="explain_norms"):
            for facets in norm_histograms_svg(stats).values():  # a row per model, a column per norm
                for col, svg in zip(st.columns(len(facets)), facets.values(), strict=True):
                    col.markdown(svg, unsafe_allow_html=True)
        if ctx.trigger is None:
            st.caption("This run has no known trigger, so only clean images are shown.")
        else:
            st.caption(
                f"{len(next(iter(stats.values()))['clean'])} test images of classes other than the target, "
                f"clean and with the trigger; post-ReLU activations of `{layer}` (the last conv block unless "
                "you chose another), the ones ℓ∞ pruning scores. A backdoored model's ℓ∞ separates the two "
                "most clearly."
            )

    st.subheader("Activation map of one image")
    if len(images) == 0:
        st.info("Pick at least one image above.")
    else:
        activation_maps_ui(ctx, images, captions, models, job.run_dir, layer)
except KDCoreError as e:
    show_error(e)
