"""Explaining a model's response to a trigger (seed 004, Cheng et al., AdvML@KDD 2019):
Grad-CAM maps (`gradcam`, `overlay`) and last-conv-layer activation statistics
(`activations`, `activation_norms`, `channel_linf`, `compare_norms`, `reduce_activations`), at the
layer `kdcore.models.layers.choose_layer` picks, captured with `kdcore.hooks`.

Functions return numpy arrays, tensors and frozen dataclasses; drawing is the UI's job.
pytorch-grad-cam is imported only when a Grad-CAM function is called.
"""

from kdcore.explain.activations import (
    NORMS,
    NormStats,
    activation_norms,
    activations,
    channel_linf,
    compare_norms,
    reduce_activations,
)
from kdcore.explain.gradcam import gradcam, overlay

__all__ = [
    "NORMS",
    "NormStats",
    "activation_norms",
    "activations",
    "channel_linf",
    "compare_norms",
    "gradcam",
    "overlay",
    "reduce_activations",
]
