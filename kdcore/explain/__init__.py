"""Explaining a model's response to a trigger (seed 004, Cheng et al., AdvML@KDD 2019):
Grad-CAM maps (`gradcam`, `overlay`) and last-conv-layer activation statistics
(`activations`, `activation_norms`, `channel_linf`, `compare_norms`).

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
    last_conv_layer,
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
    "last_conv_layer",
    "overlay",
]
