"""BCU — Backdoor Cleansing with Unlabeled data (Pang, Sun, Ling & Chen, CVPR 2023; seed 003).

The suspect model is the teacher; the student is a copy of it with part of its weights
re-drawn at random, then distilled from the teacher on clean unlabelled images only. Clean
images do not evoke the trigger response, so the student learns the clean behaviour back
while the randomised weights lose the backdoor.

    1. Student = deep copy of the suspect model.
    2. Adaptive layer-wise re-initialisation (§3.3, Eq. 3): walk the nn.Conv2d / nn.Linear
       layers in module registration order; in layer l, each weight (and bias) element is
       replaced, with probability p_l, by a fresh value from PyTorch's default layer init
       (kaiming_uniform(a=√5) ≡ U(±1/√fan_in)), drawn with the seeded generator:
           W_s = W_t ⊙ (1 − M_l) + W_rand ⊙ M_l,   M_l ~ Bernoulli(p_l).
       BatchNorm layers (weights, biases, running statistics) are copied untouched, as in the
       official code, which skips every `bn` key.
    3. Knowledge distillation on the unlabelled images (§3.2, Eq. 2): KL(p_t^T ‖ p_s^T) with
       soft targets, or cross-entropy on the teacher's argmax ("hard" labels, §4.3 Table 5).
    4. After each epoch: teacher–student top-1 agreement on a held-out slice of the unlabelled
       images (never the test set); the best epoch is kept.

Ratios p_l (`layer_ratios`):
    ResNet-18 (kdcore's resnet18-small, tv:resnet18, any model whose conv layers sit in
    `layer{1..4}.{0,1}.` blocks): first conv 0.01; the 8 basic blocks 0.01, 0.01, 0.03, 0.03,
    0.09, 0.09, 0.27, 0.27 (every conv of a block, shortcut/downsample included); FC 0.1 (§4.1).
    Any other architecture: the final nn.Linear gets 0.1; the other layers, in order, get a
    geometric schedule from 0.01 to 0.27 — p_i = 0.01 · 27^(i / (n − 1)) for i = 0..n−1 —
    the same shallow-small, deep-large shape as the published ratios (0.01 → 0.27, ×3 per stage).
    "uniform" gives every layer `uniform_ratio`; `ratios` sets one value per layer explicitly.

Temperature: the paper names T without a value; the official code (luluppang/BCU,
defense/ft/distillation_dropout_increase.py) raises it each epoch, T_e = 1 + 3·(e + 1)/E, and
uses KL without Hinton's T² factor. That is the default here (`temperature` = 4 is the final
value; `temperature_ramp=False` keeps it constant).

Optimiser: the paper trains 100 epochs of SGD (lr 0.01, momentum 0.9, weight decay 5e-4,
cosine schedule). The defaults here — 10 epochs of Adam, lr 3e-3, L2 weight decay 5e-4, cosine —
were chosen on the Fashion-MNIST BadNets demo (paper-cnn, 2,000 unlabelled images), where they
bring the ASR from 0.92 to ≈ 0.02 at −1 point of clean accuracy in under a minute on one CPU
thread; Adam at lr 1e-3 without decay left the ASR at 0.71, SGD (lr 0.01 or 0.1) at 0.74–0.89.
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from kdcore.config import setting
from kdcore.data.imageset import ImageSet
from kdcore.defenses.base import DefenseInputs, Repairer
from kdcore.distill import HardLabelKD, SoftTargetKL, agreement, kd_batches
from kdcore.errors import ConfigError, InputError
from kdcore.loop import BestEpoch, epoch_progress, train_one_epoch
from kdcore.models.spec import ModelSpec
from kdcore.progress import StepFn
from kdcore.train import make_optimizer, predict_logits

LAYER_TYPES = (nn.Conv2d, nn.Linear)

# §4.1: ResNet-18 = 1 conv, 8 basic blocks, 1 FC.
RESNET18_STEM_RATIO = 0.01
RESNET18_BLOCK_RATIOS = (0.01, 0.01, 0.03, 0.03, 0.09, 0.09, 0.27, 0.27)
FC_RATIO = 0.1
# Other architectures: geometric from the published shallowest to the deepest block ratio.
SHALLOW_RATIO, DEEP_RATIO = 0.01, 0.27

_BLOCK = re.compile(r"^layer([1-4])\.([01])\.")


@dataclass(frozen=True)
class BCUConfig:
    schedule: Literal["adaptive", "uniform"] = setting("adaptive", "adaptive (ratio grows with depth) | uniform")
    uniform_ratio: float = setting(0.1, 'fraction re-initialised in every layer when schedule = "uniform"')
    ratios: tuple[float, ...] = setting(
        (), "explicit ratio per conv/linear layer (registration order); overrides schedule"
    )
    labels: Literal["soft", "hard"] = setting(
        "soft", "soft: KL at temperature T (Eq. 2) | hard: cross-entropy on the teacher's argmax"
    )
    temperature: float = setting(4.0, "soft labels: T (the final T when ramped)")
    temperature_ramp: bool = setting(True, "official code: T_e = 1 + (T − 1)·(e + 1)/E; False = constant T")
    epochs: int = setting(10, "paper: 100 (CIFAR-10, GPU)")
    lr: float = setting(3e-3, "paper: 0.01 with SGD")
    batch_size: int = setting(128, "paper: 256")
    optimizer: Literal["adam", "sgd"] = setting("adam", "adam | sgd (paper: SGD, momentum 0.9, weight decay 5e-4)")
    momentum: float = setting(0.9, "sgd only")
    weight_decay: float = setting(5e-4, "L2, as in the paper")
    cosine: bool = setting(True, "cosine-annealed learning rate over the epochs (official code)")
    augment: bool = setting(False, "random ±2 px shifts (paper: random crop); runs the teacher on every batch")
    holdout_fraction: float = setting(0.1, "of the unlabelled images, for selecting the epoch by agreement; 0 = last")

    def __post_init__(self) -> None:
        if self.schedule not in ("adaptive", "uniform"):
            raise ConfigError(f"bcu schedule must be adaptive or uniform; got {self.schedule!r}")
        bad = [r for r in (self.uniform_ratio, *self.ratios) if not 0.0 <= r <= 1.0]
        if bad:
            raise ConfigError(f"bcu re-initialisation ratios must be in [0, 1]; got {bad}")
        if self.labels not in ("soft", "hard"):
            raise ConfigError(f"bcu labels must be soft or hard; got {self.labels!r}")
        if self.temperature < 1.0:
            raise ConfigError(f"bcu temperature must be ≥ 1; got {self.temperature}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(
                f"bcu needs epochs ≥ 1, batch_size ≥ 1, lr > 0; got {self.epochs}, {self.batch_size}, {self.lr}"
            )
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"bcu optimizer must be adam or sgd; got {self.optimizer!r}")
        if not 0.0 <= self.momentum < 1.0 or self.weight_decay < 0:
            raise ConfigError(
                f"bcu needs momentum in [0, 1) and weight_decay ≥ 0; got {self.momentum}, {self.weight_decay}"
            )
        if not 0.0 <= self.holdout_fraction < 0.5:
            raise ConfigError(f"bcu holdout_fraction must be in [0, 0.5); got {self.holdout_fraction}")


def reinit_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers BCU re-initialises: every nn.Conv2d and nn.Linear, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def resnet18_ratios(names: list[str], kinds: list[type]) -> list[float] | None:
    """The published ratios (§4.1) when the layers form a ResNet-18 (stem, `layerX.Y` blocks, FC); else None."""
    blocks = [_BLOCK.match(n) for n in names]
    if {(int(m[1]), int(m[2])) for m in blocks if m} != {(x, y) for x in range(1, 5) for y in (0, 1)}:
        return None
    out = []
    for i, (m, kind) in enumerate(zip(blocks, kinds, strict=True)):
        if m:
            out.append(RESNET18_BLOCK_RATIOS[2 * (int(m[1]) - 1) + int(m[2])])
        elif i == len(names) - 1 and kind is nn.Linear:
            out.append(FC_RATIO)
        elif i == 0:
            out.append(RESNET18_STEM_RATIO)
        else:
            return None  # conv/linear layers outside the blocks: not the published shape
    return out


def depth_ratios(n: int, last_is_fc: bool) -> list[float]:
    """Geometric 0.01 → 0.27 over the layers before the classifier; the final nn.Linear 0.1."""
    m = n - 1 if last_is_fc else n
    body = [SHALLOW_RATIO * (DEEP_RATIO / SHALLOW_RATIO) ** (i / (m - 1)) if m > 1 else SHALLOW_RATIO for i in range(m)]
    return body + [FC_RATIO] * last_is_fc


def layer_ratios(model: nn.Module, cfg: BCUConfig) -> tuple[list[float], str]:
    """Ratio per re-initialised layer and the rule that gave it."""
    layers = reinit_layers(model)
    if not layers:
        raise InputError("bcu re-initialises nn.Conv2d / nn.Linear layers; the model has none")
    if cfg.ratios:
        if len(cfg.ratios) != len(layers):
            names = ", ".join(n for n, _ in layers)
            raise ConfigError(
                f"bcu ratios has {len(cfg.ratios)} values but the model has {len(layers)} layers: {names}"
            )
        return [float(r) for r in cfg.ratios], "explicit"
    if cfg.schedule == "uniform":
        return [cfg.uniform_ratio] * len(layers), "uniform"
    names, kinds = [n for n, _ in layers], [type(m) for _, m in layers]
    published = resnet18_ratios(names, kinds)
    if published is not None:
        return published, "resnet18-published"
    return depth_ratios(len(layers), kinds[-1] is nn.Linear), "depth-geometric"


@torch.no_grad()
def reinitialise(
    model: nn.Module, ratios: list[float] | tuple[float, ...], generator: torch.Generator
) -> tuple[nn.Module, list[dict]]:
    """A copy of `model` whose conv/linear weight and bias elements are each re-drawn with the
    layer's probability (Eq. 3); returns (copy, one stats row per layer). `model` is untouched."""
    student = copy.deepcopy(model)
    layers = reinit_layers(student)
    if len(ratios) != len(layers):
        raise ConfigError(f"{len(ratios)} ratios for {len(layers)} conv/linear layers")
    stats = []
    for (name, layer), p in zip(layers, ratios, strict=True):
        # PyTorch's default init (reset_parameters): kaiming_uniform(a=√5) on W is U(±1/√fan_in); b alike.
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        n, n_new = 0, 0
        for param in (layer.weight, layer.bias):
            if param is None:
                continue
            mask = torch.rand(param.shape, generator=generator) < p  # M_l ~ Bernoulli(p_l)
            fresh = (torch.rand(param.shape, generator=generator) * 2 - 1) * bound
            param.copy_(torch.where(mask.to(param.device), fresh.to(param.device, param.dtype), param))
            n += param.numel()
            n_new += int(mask.sum())
        stats.append(
            {
                "layer": name,
                "kind": "conv" if isinstance(layer, nn.Conv2d) else "linear",
                "ratio": round(float(p), 6),
                "n_weights": n,
                "n_reinitialised": n_new,
                "fraction": n_new / n,
            }
        )
    return student, stats


def distill_student(
    teacher: nn.Module,
    student: nn.Module,
    spec: ModelSpec,
    unlabeled: ImageSet,
    cfg: BCUConfig,
    device: torch.device,
    generator: torch.Generator,
    on_step: StepFn | None = None,
) -> tuple[nn.Module, dict]:
    """Step 3–4: distil `teacher` into `student` on `unlabeled`; returns the selected student and a summary.

    Not `kdcore.distill.distill`: BCU's optimiser, cosine schedule, temperature ramp, hard labels
    and full-precision forward differ; the epoch, batches and selection are the same code."""
    perm = torch.randperm(len(unlabeled), generator=generator)
    n_hold = round(cfg.holdout_fraction * len(unlabeled))
    hold, train = unlabeled.subset(perm[:n_hold]), unlabeled.subset(perm[n_hold:])
    if len(train) < 1:
        raise InputError(f"bcu needs unlabelled images to distil on; got {len(unlabeled)}")
    teacher.to(device).eval()
    student.to(device)
    hold_pred = predict_logits(teacher, spec, hold.images, device).argmax(1) if n_hold else None
    cached = None if cfg.augment else predict_logits(teacher, spec, train.images, device)  # (N, K) float32, CPU

    opt = make_optimizer(student.parameters(), cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs) if cfg.cosine else None
    steps = -(-len(train) // cfg.batch_size)
    start = agreement(student, spec, hold.images, hold_pred, device) if n_hold else None
    history, best = [], BestEpoch(ties="last")  # ties go to the later epoch
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        t = 1.0 + (cfg.temperature - 1.0) * (epoch + 1) / cfg.epochs if cfg.temperature_ramp else cfg.temperature
        # Eq. 2: KL at T without Hinton's T² (official code).
        loss_fn = SoftTargetKL(t, t_squared=False) if cfg.labels == "soft" else HardLabelKD()
        # The official code trains in full precision: no autocast, for the teacher or the student.
        epoch_batches = kd_batches(
            teacher, spec, spec, train.images, cfg.batch_size, generator, device, cached, cfg.augment, amp=False
        )
        on_batch = epoch_progress(on_step, epoch, steps, cfg.epochs)
        row = {
            "epoch": epoch + 1,
            **train_one_epoch(student, epoch_batches, loss_fn, opt, device, on_batch, amp=False),
        }
        if sched is not None:
            sched.step()
        if cfg.labels == "soft":
            row["temperature"] = round(t, 4)
        if hold_pred is not None:
            row["holdout_agreement"] = agreement(student, spec, hold.images, hold_pred, device)
            best.update(student, epoch + 1, row["holdout_agreement"])
        history.append(row)
    kept = best.restore(student)
    summary = {
        "n_images": len(train),
        "n_holdout": n_hold,
        "start_agreement": start,
        "best_epoch": best.epoch if kept else cfg.epochs,
        "holdout_agreement": best.score if kept else None,
        "final_loss": history[-1]["loss"],
        "train_s": round(time.perf_counter() - t0, 2),
        "history": history,
    }
    return student.eval(), summary


class BCU(Repairer):
    name = "bcu"
    config_class = BCUConfig
    needs = ("unlabeled",)
    summary = "Backdoor Cleansing with Unlabeled data: layer-wise re-initialisation + KD on unlabelled images"
    paper = "Pang et al., Backdoor Cleansing with Unlabeled Data, CVPR 2023 (github.com/luluppang/BCU)"

    def repair(self, inputs: DefenseInputs) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
        cfg = self.config
        teacher = copy.deepcopy(inputs.model).eval()
        ratios, rule = layer_ratios(teacher, cfg)
        student, layers = reinitialise(teacher, ratios, inputs.generator(0))
        inputs.on_progress(self.name, 0, cfg.epochs, {"message": "re-initialised; distilling"})

        def on_step(step: int, total: int, metrics: dict) -> None:
            inputs.on_progress(self.name, step, total, metrics)

        student, kd = distill_student(
            teacher, student, inputs.spec, inputs.unlabeled, cfg, inputs.device, inputs.generator(1), on_step
        )
        n_all = sum(r["n_weights"] for r in layers)
        evidence = {
            "ratio_rule": rule,
            "labels": cfg.labels,
            "temperature": cfg.temperature if cfg.labels == "soft" else None,
            "n_unlabeled": len(inputs.unlabeled),
            "layers": layers,
            "reinitialised_fraction": sum(r["n_reinitialised"] for r in layers) / n_all,
            "batchnorm": "copied untouched",
            "distill": kd,
        }
        evidence["headline"] = (
            f"{100 * evidence['reinitialised_fraction']:.1f} % of weights re-initialised ({rule}), then distilled "
            f"on {len(inputs.unlabeled):,} unlabelled images with {cfg.labels} labels"
        )
        return student, evidence, {}
