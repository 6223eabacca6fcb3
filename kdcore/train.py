"""Supervised training (`fit`) and inference (`predict_logits`), on the one loop in `kdcore.loop`.

Data are in-memory uint8 `ImageSet`s; each batch is moved to the device and normalised there
by the model's `ModelSpec`, so no DataLoader workers are needed at these sizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from kdcore.config import setting
from kdcore.data.imageset import ImageSet
from kdcore.device import autocast
from kdcore.errors import ConfigError
from kdcore.loop import Batch, BestEpoch, CrossEntropy, epoch_progress, train_one_epoch
from kdcore.models.spec import ModelSpec
from kdcore.progress import StepFn


@dataclass(frozen=True)
class TrainConfig:
    """Supervised training (the attacker's teacher, the baseline, and fine-tuning)."""

    epochs: int = setting(8, "training epochs (the most, with early stopping)", min=0)
    batch_size: int = setting(128, "batch size", min=1)
    lr: float = setting(1e-3, "learning rate")
    optimizer: Literal["adam", "sgd"] = setting("adam", "optimizer")
    momentum: float = setting(0.9, "sgd only")
    weight_decay: float = setting(0.0, "L2 weight decay")
    val_fraction: float = setting(0.0, "held-out slice of the training set for early stopping / selection")
    patience: int = setting(0, min=0, help="epochs without val improvement before stopping; 0 = run all epochs")

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(
                "training needs epochs ≥ 0, batch_size ≥ 1 and lr > 0; got "
                f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr:g}"
            )
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be adam or sgd; got {self.optimizer!r}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in [0, 0.5); got {self.val_fraction}")
        if self.patience < 0:
            raise ConfigError(f"patience must be ≥ 0; got {self.patience}")


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def seeded_model(build, seed: int) -> nn.Module:
    """Call `build()` with torch's global RNG forked and seeded, so initialisation is reproducible
    without changing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def batches(n: int, batch_size: int, generator: torch.Generator | None = None):
    """Index tensors for one pass: shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def labelled_batches(
    spec: ModelSpec, data: ImageSet, batch_size: int, generator: torch.Generator | None, device: torch.device
) -> Iterator[Batch]:
    """One shuffled pass over labelled `data`: normalised images and labels on the device."""
    labels = data.require_labels("Training")
    for idx in batches(len(data), batch_size, generator):
        x = spec.normalize(data.images[idx].to(device, non_blocking=True))  # (B, C, H, W)
        yield Batch(x, labels[idx].to(device, non_blocking=True))


@torch.inference_mode()
def predict_logits(
    model: nn.Module, spec: ModelSpec, images: torch.Tensor, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    """float32 logits (N, K) on the CPU for uint8 images (N, C, H, W)."""
    was_training = model.training
    model.eval()
    out = []
    for idx in batches(len(images), batch_size):
        x = spec.normalize(images[idx].to(device, non_blocking=True))
        with autocast(device):
            out.append(model(x).float().cpu())
    model.train(was_training)
    if not out:
        return torch.zeros((0, spec.num_classes))
    return torch.cat(out)


def accuracy(model: nn.Module, spec: ModelSpec, data: ImageSet, device: torch.device) -> float:
    labels = data.require_labels("Accuracy")
    if len(data) == 0:
        return float("nan")
    pred = predict_logits(model, spec, data.images, device).argmax(1)
    return (pred == labels).float().mean().item()


def fit(
    model: nn.Module,
    spec: ModelSpec,
    data: ImageSet,
    cfg: TrainConfig,
    device: torch.device,
    seed: int = 0,
    on_step: StepFn | None = None,
) -> tuple[nn.Module, dict]:
    """Train `model` on labelled `data`. With `cfg.val_fraction` > 0, a held-out slice selects the
    best epoch (and stops early after `cfg.patience` epochs without improvement).

    Returns the (best) model on `device` and a history dict with per-epoch metrics.
    """
    g = torch.Generator().manual_seed(seed)
    val = None
    if cfg.val_fraction > 0 and len(data) >= 20:
        perm = torch.randperm(len(data), generator=g)
        n_val = max(1, round(cfg.val_fraction * len(data)))
        val, data = data.subset(perm[:n_val]), data.subset(perm[n_val:])
    model.to(device)
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    steps_per_epoch = -(-len(data) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    history: list[dict] = []
    # Only trained epochs compete: when fine-tuning, a val slice of the detoxified set is biased
    # towards samples the student already agrees on, so the untouched start would always "win".
    best = BestEpoch(ties="first", patience=cfg.patience)
    loss_fn = CrossEntropy()
    for epoch in range(cfg.epochs):
        on_batch = epoch_progress(on_step, epoch, steps_per_epoch, cfg.epochs)
        epoch_batches = labelled_batches(spec, data, cfg.batch_size, g, device)
        row = {"epoch": epoch + 1, **train_one_epoch(model, epoch_batches, loss_fn, opt, device, on_batch)}
        if val is not None:
            row["val_acc"] = accuracy(model, spec, val, device)
            best.update(model, epoch + 1, row["val_acc"])
        history.append(row)
        if on_step is not None:
            on_step((epoch + 1) * steps_per_epoch, total, dict(row))
        if best.stop:
            break
    best.restore(model)
    return model, {
        "epochs": history,
        "best_epoch": best.epoch,
        "best_val_acc": best.score if val else None,
        "n_train": len(data),
        "n_val": len(val) if val is not None else 0,
    }
