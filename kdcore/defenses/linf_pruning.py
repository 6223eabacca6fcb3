"""ℓ∞ neuron pruning of the last conv layer, with a threshold sweep (seed 004: Cheng et al.,
"Defending against Backdoor Attack on Deep Neural Networks", AdvML@KDD 2019, §5).

The seed prunes final-conv neurons whose ℓ∞ activation exceeds a threshold, starting from "the max
value of clean images' activation value" and lowering it while clean accuracy holds (its Fig. 5
and Table 1 plot accuracy and attack success against the threshold). A pruned model is saved as
plain weights, so a neuron's mask has to be fixed, not decided per input. Steps:

1. Layer: the last nn.Conv2d; a channel's activation is relu(conv) or, when a BatchNorm consumes
   the conv, relu(bn(conv)) (`channels.channel_layer`).
2. Score: per clean unlabelled image n and channel c, ℓ∞_nc = max over (h, w) of the activation
   (`channel_linf`, clamped at 0 as the ReLU would). A channel's score is s_c = quantile_q over n of
   ℓ∞_nc; q = 1 (the default) is the seed's "max over clean images", the largest value the channel
   ever reaches on clean data. A lower q ignores a few outlying images.
3. Sweep: thresholds t from the clean maximum max_c s_c (prunes nothing) down to `lowest` × that
   maximum in `steps` even steps, or the explicit `thresholds` (after the clean maximum). At each t the channels with
   s_c > t are masked: filter and BN affine zeroed, so their activation is exactly 0
   (`channels.zero_channels`). Pruned sets are nested, so n_pruned only grows as t falls.
4. Measure at each t: agreement = fraction of the clean unlabelled images on which the pruned
   model predicts what the suspect model predicts (label-free), and — the one place a defense
   uses evaluation data, as a measurement only — `inputs.evaluate` (clean_acc, asr, poison_acc).
   The sweep stops after the first t whose agreement falls below `stop_agreement`.
5. Choose, without test labels or the trigger: walking down from the top, the lowest threshold
   before agreement first falls below 1 − `max_agreement_drop`. That model is returned.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kdcore.config import setting
from kdcore.defenses.base import DefenseInputs, Repairer
from kdcore.defenses.channels import channel_layer, zero_channels
from kdcore.errors import ConfigError
from kdcore.explain.activations import channel_linf
from kdcore.train import predict_logits


@dataclass(frozen=True)
class LinfPruningConfig:
    steps: int = setting(20, "thresholds in the sweep, evenly spaced from the clean max down to lowest × it")
    lowest: float = setting(0.0, "fraction of the clean max where the even sweep ends (0 = threshold 0)")
    thresholds: tuple[float, ...] = setting((), "explicit thresholds (activation units) instead of steps/lowest")
    quantile: float = setting(1.0, "channel score = this quantile over clean images of the per-image ℓ∞ (1 = max)")
    max_agreement_drop: float = setting(0.03, "choose the lowest threshold keeping agreement ≥ 1 − this")
    stop_agreement: float = setting(0.5, "stop sweeping after a threshold whose agreement falls below this")
    layer: str = setting("", 'qualified name of the conv layer to prune; "" = the last nn.Conv2d')
    batch_size: int = setting(256, "images per forward pass")

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ConfigError(f"steps must be ≥ 2 (the clean max and at least one lower threshold); got {self.steps}")
        if not 0.0 <= self.lowest < 1.0:
            raise ConfigError(f"lowest must be in [0, 1), a fraction of the clean max; got {self.lowest}")
        if any(not math.isfinite(t) or t < 0 for t in self.thresholds):
            raise ConfigError(f"thresholds must be finite and ≥ 0 (activations after ReLU); got {self.thresholds}")
        if not 0.0 < self.quantile <= 1.0:
            raise ConfigError(f"quantile must be in (0, 1]; got {self.quantile}")
        if not 0.0 <= self.max_agreement_drop < 1.0:
            raise ConfigError(f"max_agreement_drop must be in [0, 1); got {self.max_agreement_drop}")
        if not 0.0 <= self.stop_agreement <= 1.0 - self.max_agreement_drop:
            raise ConfigError(
                f"stop_agreement must be in [0, 1 − max_agreement_drop] = [0, {1 - self.max_agreement_drop:g}] "
                f"so the sweep reaches the chosen threshold; got {self.stop_agreement}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1; got {self.batch_size}")


def channel_scores(model: nn.Module, inputs: DefenseInputs, layer_name: str, quantile: float, batch_size: int):
    """(ChannelLayer, per-channel scores float64 (C,)): quantile over clean images of max(0, max_hw a)."""
    layer = channel_layer(model, inputs.spec, layer_name or None)
    linf = channel_linf(model, inputs.spec, inputs.unlabeled.images, layer.activation_layer, batch_size)  # (N, C)
    linf = np.maximum(linf.astype(np.float64), 0.0)  # the ReLU after the layer
    return layer, np.quantile(linf, quantile, axis=0)  # (C,)


class LinfPruning(Repairer):
    name = "linf-pruning"
    config_class = LinfPruningConfig
    needs = ("unlabeled",)
    summary = "ℓ∞ neuron pruning of the last conv layer, with a threshold sweep (Cheng et al. 2019)"
    paper = "Cheng et al., Defending against Backdoor Attack on Deep Neural Networks, AdvML@KDD 2019"

    def thresholds(self, top: float) -> list[float]:
        """The sweep, highest first: `steps` from `top` (the clean max) to lowest × top, or the explicit
        thresholds, with `top` put first when they are all below it so the sweep starts unpruned."""
        cfg = self.config
        if cfg.thresholds:
            ts = sorted({float(t) for t in cfg.thresholds}, reverse=True)
            return ts if ts[0] >= top else [top, *ts]
        return np.linspace(top, cfg.lowest * top, cfg.steps).tolist()

    def repair(self, inputs: DefenseInputs) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
        cfg = self.config
        images = inputs.unlabeled.images
        work = copy.deepcopy(inputs.model).to(inputs.device).eval()
        layer, scores = channel_scores(work, inputs, cfg.layer, cfg.quantile, cfg.batch_size)
        order = np.argsort(-scores, kind="stable")  # highest score first: the order channels fall
        suspect_pred = predict_logits(work, inputs.spec, images, inputs.device, cfg.batch_size).argmax(1)

        sweep: list[dict] = []
        thresholds = self.thresholds(float(scores.max()))
        pruned = 0
        for i, t in enumerate(thresholds):
            n = int((scores > t).sum())
            if n != pruned or not sweep:
                zero_channels(layer, order[pruned:n].tolist())  # nested sets: mask only the new ones
                pruned = n
                pred = predict_logits(work, inputs.spec, images, inputs.device, cfg.batch_size).argmax(1)
                ev = inputs.evaluate(work)
                row = {
                    "agreement": (pred == suspect_pred).float().mean().item() if len(images) else 1.0,
                    **(ev.metrics() if ev else {"clean_acc": None, "asr": None, "poison_acc": None}),
                }
            else:
                row = {k: sweep[-1][k] for k in ("agreement", "clean_acc", "asr", "poison_acc")}
            sweep.append({"threshold": t, "n_pruned": n, **row})
            inputs.on_progress(self.name, i + 1, len(thresholds), {"threshold": t, **row, "n_pruned": n})
            if row["agreement"] < cfg.stop_agreement or n == layer.channels:
                break

        chosen = 0  # row 0 is the clean max: it prunes nothing and agrees fully
        for i, row in enumerate(sweep):
            if row["agreement"] < 1.0 - cfg.max_agreement_drop:
                break
            chosen = i
        t = sweep[chosen]["threshold"]
        channels = sorted(int(c) for c in np.flatnonzero(scores > t))
        repaired = copy.deepcopy(inputs.model).to(inputs.device).eval()
        zero_channels(channel_layer(repaired, inputs.spec, layer.name), channels)
        evidence = {
            "layer": layer.name,
            "norm_layer": layer.norm_name,
            "n_channels": layer.channels,
            "n_images": len(images),
            "score": f"quantile {cfg.quantile:g} over clean images of each channel's max activation (after ReLU)",
            "clean_max": float(scores.max()),
            "channel_scores": [float(s) for s in scores],
            "sweep": sweep,
            "chosen_threshold": t,
            "chosen_agreement": sweep[chosen]["agreement"],
            "n_pruned": len(channels),
            "pruned_channels": channels,
        }
        evidence["headline"] = (
            f"{len(channels)} of {layer.channels} channels of {layer.name} pruned at ℓ∞ threshold {t:.3g} "
            f"(clean max {evidence['clean_max']:.3g}); agreement with the suspect on clean images "
            f"{100 * evidence['chosen_agreement']:.1f} %"
        )
        return repaired, evidence, {}
