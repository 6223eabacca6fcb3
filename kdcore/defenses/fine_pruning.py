"""Fine-pruning: prune dormant last-conv channels, then fine-tune on labelled clean data (Liu,
Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks", RAID 2018; a labelled-data baseline, compared in seed 002's NAD table).

The idea: a backdoor hides in neurons that clean inputs leave dormant, so removing the channels
clean data uses least costs little accuracy and may remove the backdoor; fine-tuning then repairs
the accuracy and overwrites what is left of it. Steps:

1. Split the labelled clean images at random into a fine-tuning part and a held-out part
   (`holdout_fraction`); the held-out part only measures accuracy.
2. Layer: the last nn.Conv2d; a channel's activation is relu(conv), or relu(bn(conv)) when a
   BatchNorm consumes it (`channels.channel_layer`).
3. Rank channels by mean activation over the fine-tuning images and all positions (h, w),
   lowest first (ties: lower index first).
4. Prune in that order, `channels_per_step` at a time (masked in the weights:
   `channels.zero_channels`), measuring held-out accuracy after each step (the prune curve).
   Stop before the step that would take held-out accuracy more than `max_acc_drop` below the
   unpruned model's, or past `max_prune_fraction` of the channels.
5. Fine-tune the pruned model on the fine-tuning part (`kdcore.train.fit`). The pruned channels'
   gradients are zeroed by tensor hooks during training (`channels.freeze_channels`), so their
   weights stay exactly 0 and the returned model is plain weights; the hooks are removed after.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kdcore.config import setting
from kdcore.data.imageset import ImageSet
from kdcore.defenses.base import DefenseInputs, Repairer
from kdcore.defenses.channels import channel_layer, freeze_channels, zero_channels
from kdcore.errors import ConfigError, InputError
from kdcore.explain.activations import reduce_activations
from kdcore.progress import for_stage
from kdcore.train import TrainConfig, fit, predict_logits


@dataclass(frozen=True)
class FinePruningConfig:
    holdout_fraction: float = setting(0.2, "share of the labelled clean images held out to measure accuracy")
    max_acc_drop: float = setting(0.05, "stop pruning before held-out accuracy falls more than this (absolute)")
    max_prune_fraction: float = setting(0.9, "never prune more than this share of the layer's channels")
    channels_per_step: int = setting(1, "channels pruned between two accuracy measurements")
    finetune: TrainConfig = setting(factory=lambda: TrainConfig(epochs=10, batch_size=64, lr=1e-3))
    layer: str = setting("", 'qualified name of the conv layer to prune; "" = the last nn.Conv2d')
    batch_size: int = setting(256, "images per forward pass when measuring activations and accuracy")

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_fraction <= 0.5:
            raise ConfigError(f"holdout_fraction must be in (0, 0.5]; got {self.holdout_fraction}")
        if not 0.0 <= self.max_acc_drop < 1.0:
            raise ConfigError(f"max_acc_drop must be in [0, 1), an absolute accuracy drop; got {self.max_acc_drop}")
        if not 0.0 < self.max_prune_fraction < 1.0:
            raise ConfigError(f"max_prune_fraction must be in (0, 1); got {self.max_prune_fraction}")
        if self.channels_per_step < 1:
            raise ConfigError(f"channels_per_step must be ≥ 1; got {self.channels_per_step}")
        if not isinstance(self.finetune, TrainConfig):
            raise ConfigError(f"finetune must be a TrainConfig (or a mapping of its settings); got {self.finetune!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1; got {self.batch_size}")


def mean_activations(model: nn.Module, inputs: DefenseInputs, images: torch.Tensor, layer, batch_size: int):
    """float64 (C,): each channel's activation relu(·) averaged over images and positions (h, w)."""
    per_image = reduce_activations(
        model, inputs.spec, images, layer.activation_layer, batch_size, lambda a: a.clamp_min(0).mean(dim=(2, 3))
    )  # (N, C)
    return per_image.double().mean(0).numpy()


class FinePruning(Repairer):
    name = "fine-pruning"
    config_class = FinePruningConfig
    needs = ("clean_labeled",)
    needs_labels = True
    summary = "Fine-pruning: prune dormant last-conv channels, then fine-tune on labelled clean data (Liu et al. 2018)"
    paper = "Liu, Dolan-Gavitt & Garg, Fine-Pruning: Defending Against Backdooring Attacks on DNNs, RAID 2018"

    def split(self, inputs: DefenseInputs) -> tuple[ImageSet, ImageSet]:
        """(fine-tuning part, held-out part) of the labelled clean images."""
        data = inputs.clean_labeled
        data.require_labels("Fine-pruning")
        n_hold = round(self.config.holdout_fraction * len(data))
        if n_hold < 1 or len(data) - n_hold < 1:
            raise InputError(
                f"fine-pruning needs labelled clean images both to fine-tune on and to hold out; {len(data)} "
                f"image(s) with holdout_fraction {self.config.holdout_fraction} leave none for one of them"
            )
        perm = torch.randperm(len(data), generator=inputs.generator(1))
        return data.subset(perm[n_hold:]), data.subset(perm[:n_hold])

    def repair(self, inputs: DefenseInputs) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
        cfg = self.config
        tune, held = self.split(inputs)

        def held_acc(model: nn.Module) -> float:
            pred = predict_logits(model, inputs.spec, held.images, inputs.device, cfg.batch_size).argmax(1)
            return (pred == held.labels).double().mean().item()

        work = copy.deepcopy(inputs.model).to(inputs.device).eval()
        layer = channel_layer(work, inputs.spec, cfg.layer or None)
        means = mean_activations(work, inputs, tune.images, layer, cfg.batch_size)
        order = np.argsort(means, kind="stable").tolist()  # least active first

        base = held_acc(work)
        curve = [{"n_pruned": 0, "fraction": 0.0, "heldout_acc": base}]
        n_max = int(cfg.max_prune_fraction * layer.channels)
        n, steps = 0, -(-n_max // cfg.channels_per_step)
        while n < n_max:
            k = min(n + cfg.channels_per_step, n_max)
            zero_channels(layer, order[n:k])
            acc = held_acc(work)
            curve.append({"n_pruned": k, "fraction": k / layer.channels, "heldout_acc": acc})
            inputs.on_progress(f"{self.name}: prune", len(curve) - 1, steps, {"n_pruned": k, "heldout_acc": acc})
            if acc < base - cfg.max_acc_drop:
                break
            n = k
        pruned = order[:n]

        model = copy.deepcopy(inputs.model).to(inputs.device)
        layer = channel_layer(model, inputs.spec, layer.name)
        zero_channels(layer, pruned)
        acc_pruned = held_acc(model)
        handles = freeze_channels(layer, pruned)
        try:
            model, history = fit(
                model,
                inputs.spec,
                tune,
                cfg.finetune,
                inputs.device,
                inputs.seed,
                for_stage(inputs.on_progress, f"{self.name}: fine-tune"),
            )
        finally:
            for h in handles:
                h.remove()
        model.eval()
        epochs = history["epochs"]
        evidence = {
            "layer": layer.name,
            "norm_layer": layer.norm_name,
            "n_channels": layer.channels,
            "n_finetune": len(tune),
            "n_heldout": len(held),
            "mean_activation": [float(m) for m in means],
            "n_pruned": len(pruned),
            "prune_fraction": len(pruned) / layer.channels,
            "pruned_channels": pruned,  # in pruning order, least active first
            "prune_curve": curve,
            "heldout_acc_before": base,
            "heldout_acc_pruned": acc_pruned,
            "heldout_acc_after": held_acc(model),
            "finetune": {
                "epochs": len(epochs),
                "first_loss": epochs[0]["loss"] if epochs else None,
                "last_loss": epochs[-1]["loss"] if epochs else None,
                "last_train_acc": epochs[-1]["acc"] if epochs else None,
                "best_epoch": history["best_epoch"],
                "best_val_acc": history["best_val_acc"],
            },
        }
        evidence["headline"] = (
            f"{len(pruned)} of {layer.channels} dormant channels of {layer.name} pruned, then fine-tuned on "
            f"{len(tune):,} labelled clean images (held-out accuracy {100 * evidence['heldout_acc_after']:.1f} %)"
        )
        return model, evidence, {}
