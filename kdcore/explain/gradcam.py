"""Grad-CAM of the last convolutional layer (seed 004: Cheng et al., AdvML@KDD 2019, §3 and Fig. 2;
Grad-CAM itself is Selvaraju et al., ICCV 2017), computed by pytorch-grad-cam.

Steps, per image with class c:
1. Forward the normalised image; a hook on the target layer (default: the last conv to run,
   `choose_layer(model, spec, "last_conv")`) keeps its output A (C, h, w).
2. Backpropagate the class score y_c (the logit, `ClassifierOutputTarget(c)`; c = the predicted
   class when no target is given) to get ∂y_c/∂A (C, h, w).
3. Channel weights α_k = mean over (h, w) of ∂y_c/∂A_k (`GradCAM.get_cam_weights`), (C,).
4. cam = ReLU(Σ_k α_k A_k) (h, w), min-max scaled to [0, 1], resized to the input's (H, W)
   (bilinear, OpenCV) and min-max scaled again.
The seed compares these maps for the true and the target label, on clean and triggered inputs,
for a vanilla and a backdoored model; the caller makes those calls and `overlay` draws them.

pytorch-grad-cam 1.5.7 changes the model it is given; `gradcam` undoes or avoids each change:
- `BaseCAM.__init__` calls `model.eval()` and never restores it → every module's `training` flag
  is restored afterwards.
- Its backward accumulates `.grad` into every parameter and `model.zero_grad()` drops the caller's
  → parameters are frozen during the call (the input requires grad instead, so the layer output
  still gets gradients) and each parameter's `requires_grad` and `.grad` are put back.
- It needs autograd, and inside `torch.inference_mode()` `torch.enable_grad()` alone is not enough
  ("element 0 of tensors does not require grad") → the call runs under `inference_mode(False)`
  plus `enable_grad()`, so `gradcam` works whether the caller is in inference mode or not.
- Its activation hook stores `output.cpu().detach()`, which on the CPU aliases the output, so an
  in-place ReLU after the conv (paper-cnn, VGG) makes A post-ReLU on the CPU but pre-ReLU on a GPU
  → a cloning `reshape_transform` keeps A the conv output on every device (the gradients are
  taken with respect to the conv output too).
- `BaseCAM.__exit__` swallows IndexError (it prints it and the `with` block yields nothing) →
  target classes are checked here, and hooks are released in `finally` rather than with `with`.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from kdcore.errors import ConfigError, InputError
from kdcore.explain.activations import check_images
from kdcore.hooks import model_device, restored_modes
from kdcore.models.layers import choose_layer
from kdcore.models.spec import ModelSpec
from kdcore.train import batches

Targets = Sequence[int | None] | int | None


class _PredictedClass:
    """pytorch-grad-cam target: the logit of the class the model predicts for this image."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:  # (K,) logits of one image
        return model_output[model_output.argmax()]


def _resolve_targets(target_classes: Targets, n: int, num_classes: int) -> list[int | None]:
    if target_classes is None or isinstance(target_classes, (int, np.integer)):
        items: list = [target_classes] * n
    else:
        items = list(target_classes)
        if len(items) != n:
            raise InputError(f"{len(items)} target classes given for {n} images; give one per image, or one int")
    out: list[int | None] = []
    for t in items:
        if t is None:
            out.append(None)
            continue
        if isinstance(t, bool):
            raise ConfigError(f"Target class must be a class index or None; got {t!r}")
        try:
            c = operator.index(t)
        except TypeError:
            raise ConfigError(f"Target class must be a class index or None; got {t!r}") from None
        if not 0 <= c < num_classes:
            raise ConfigError(
                f"Target class {c} does not exist: the model has {num_classes} classes (0..{num_classes - 1})"
            )
        out.append(c)
    return out


@contextlib.contextmanager
def _model_state_kept(model: nn.Module) -> Iterator[None]:
    """Freeze the parameters for the duration; restore modes, requires_grad and .grad after."""
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    with restored_modes(model, eval_mode=False):  # BaseCAM calls model.eval() itself
        try:
            for p, _, _ in params:
                p.requires_grad_(False)
            yield
        finally:
            for p, requires_grad, grad in params:
                p.requires_grad_(requires_grad)
                p.grad = grad


def gradcam(
    model: nn.Module,
    spec: ModelSpec,
    images_u8: torch.Tensor,
    target_classes: Targets,
    layer: nn.Module | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Grad-CAM maps, float32 (N, H, W) in [0, 1], for uint8 images (N, C, H, W).

    target_classes: one class per image, one int for all, or None; a None entry explains the
    class the model predicts for that image. layer: default `choose_layer(model, spec, "last_conv")`.
    Runs in eval mode on the model's device; may be called inside `torch.inference_mode()`.
    The model comes back in the modes, `requires_grad` and `.grad` it had, with no hooks left.
    A layer whose output is 1×1 gives constant maps, which scale to all zeros.
    """
    from pytorch_grad_cam import GradCAM  # heavy: grad-cam (opencv), only for Explain
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # heavy: grad-cam

    check_images(spec, images_u8)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1; got {batch_size}")
    n, (_, h, w) = len(images_u8), spec.input_shape
    targets = [
        _PredictedClass() if c is None else ClassifierOutputTarget(c)
        for c in _resolve_targets(target_classes, n, spec.num_classes)
    ]
    if n == 0:
        return np.zeros((0, h, w), dtype=np.float32)
    layer = choose_layer(model, spec, "last_conv")[1] if layer is None else layer
    if not any(m is layer for m in model.modules()):
        raise ConfigError(f"The layer {type(layer).__name__} is not part of the model; pick one of its modules")
    device = model_device(model)
    maps: list[np.ndarray] = []
    with torch.inference_mode(False), torch.enable_grad(), _model_state_kept(model):
        cam = GradCAM(model, [layer], reshape_transform=torch.clone)  # registers 2 forward hooks on `layer`
        try:
            for idx in batches(n, batch_size):
                # clone(): images made in inference mode become normal tensors autograd can use
                x = spec.normalize(images_u8[idx].clone().to(device, non_blocking=True))  # (B, C, H, W)
                x.requires_grad_(True)  # parameters are frozen; gradients flow to A through the input
                maps.append(cam(x, [targets[i] for i in idx.tolist()]))  # (B, H, W) float32
        finally:
            cam.activations_and_grads.release()
            cam.outputs = None  # drops the retained graph of the last batch
    return np.clip(np.concatenate(maps).astype(np.float32, copy=False), 0.0, 1.0)


def overlay(image_u8: torch.Tensor | np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """uint8 (H, W, 3) RGB: `cam` (H, W) in [0, 1] as a jet heatmap blended over the image (C, H, W).

    image_weight: share of the image in the blend (pytorch-grad-cam's `show_cam_on_image`), 0..1.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image  # heavy: grad-cam (opencv)

    img = image_u8.detach().cpu().numpy() if isinstance(image_u8, torch.Tensor) else np.asarray(image_u8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[0] not in (1, 3):
        raise InputError(f"overlay needs a uint8 image (C, H, W) with C = 1 or 3; got {img.dtype} {img.shape}")
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != img.shape[1:]:
        raise InputError(f"The CAM is {cam.shape} but the image is {img.shape[1:]} (H, W); they must match")
    if not 0.0 <= image_weight <= 1.0:
        raise ConfigError(f"image_weight must be in [0, 1]; got {image_weight}")
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img  # (3, H, W)
    rgb = rgb.transpose(1, 2, 0).astype(np.float32) / 255.0  # (H, W, 3) in [0, 1]
    return show_cam_on_image(rgb, np.clip(cam, 0.0, 1.0), use_rgb=True, image_weight=image_weight)
