"""The one training loop of the engine: an epoch function, a loss protocol and a best-epoch selector.

Every trainer in kdcore (supervised `fit`, KD `distill`, BCU's distillation, NAD's attention
distillation, fine-pruning's fine-tune through `fit`) is the same three pieces:

    1. An iterable of `Batch`es: the student's input, already on the device and normalised, and
       what the loss compares it with (labels, or the teacher's logits). Whatever differs between
       methods before the student runs (shuffling, augmentation, a cached or live teacher) lives
       in the caller's batch generator, so the random draws keep their order.
    2. A `Loss`: (student logits, batch) → (scalar loss, per-batch sums of its own metrics).
    3. `train_one_epoch`: forward (under autocast unless told not to), loss, backward, step, with
       one host sync per step (the loss for the progress callback); metric sums stay on the
       device until the epoch ends.

`BestEpoch` keeps the state_dict of the best-scoring epoch, with the tie rule and patience given
as parameters: `distill` keeps ties for the later (lower-loss) epoch, `fit` keeps the first.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kdcore.device import autocast
from kdcore.errors import ConfigError
from kdcore.progress import StepFn

EpochStepFn = Callable[[int, dict[str, Any]], None]  # (1-based step within the epoch, {"loss": ...})


@dataclass(frozen=True)
class Batch:
    """One training step's data: the student's input and the loss's target."""

    x: torch.Tensor  # (B, C, H, W) float, normalised, on the device
    target: torch.Tensor  # labels (B,) or teacher logits (B, K), on the device

    def __len__(self) -> int:
        return len(self.x)


class Loss:
    """A training objective. `__call__(logits, batch)` returns the scalar loss and a float64 tensor
    (len(metrics),) of this batch's *sums* of the named metrics (None when there are none); the
    epoch divides the summed sums by the number of images."""

    metrics: tuple[str, ...] = ()

    def __call__(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class CrossEntropy(Loss):
    """Cross-entropy on labels; reports training accuracy ("acc")."""

    metrics = ("acc",)

    def __call__(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        loss = F.cross_entropy(logits.float(), batch.target)
        correct = (logits.detach().argmax(1) == batch.target).sum()  # exact count, stays on the device
        return loss, correct.double().reshape(1)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: Loss,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    on_step: EpochStepFn | None = None,
    amp: bool = True,
) -> dict:
    """One pass over `batches`; returns {"loss": mean loss, **mean of each of `loss_fn.metrics`}.

    `amp=False` runs the student in full precision (BCU's distillation, as its official code)."""
    model.train()
    total_loss, seen = 0.0, 0
    sums = torch.zeros(len(loss_fn.metrics), dtype=torch.float64, device=device)
    for i, batch in enumerate(batches):
        with autocast(device, amp):
            logits = model(batch.x)
        loss, batch_sums = loss_fn(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        batch_loss = loss.item()  # the one host sync per step
        total_loss += batch_loss * len(batch)
        seen += len(batch)
        if batch_sums is not None:
            sums += batch_sums
        if on_step is not None:
            on_step(i + 1, {"loss": batch_loss})
    means = (sums / max(seen, 1)).tolist() if loss_fn.metrics else []
    return {"loss": total_loss / max(seen, 1), **dict(zip(loss_fn.metrics, means, strict=True))}


def epoch_progress(on_step: StepFn | None, epoch: int, steps_per_epoch: int, epochs: int) -> EpochStepFn | None:
    """The epoch callback that reports run-wide progress: (epoch · steps + i, epochs · steps,
    {"epoch": epoch + 1, **metrics}), `epoch` counted from 0."""
    if on_step is None:
        return None
    return lambda i, m: on_step(epoch * steps_per_epoch + i, epochs * steps_per_epoch, {"epoch": epoch + 1, **m})


class BestEpoch:
    """Keeps a deep copy of the model's state_dict at the best-scoring epoch.

    ties: "first" keeps the earlier of equal scores (strictly better replaces); "last" keeps the
    later one (equal replaces). patience: epochs without an improvement after which `stop` is
    True; 0 = never stop early."""

    def __init__(self, ties: str = "first", patience: int = 0) -> None:
        if ties not in ("first", "last"):
            raise ConfigError(f"ties must be first or last; got {ties!r}")
        if patience < 0:
            raise ConfigError(f"patience must be ≥ 0; got {patience}")
        self.ties, self.patience = ties, patience
        self.score: float | None = None  # None until an epoch is kept
        self.epoch = 0  # 1-based; 0 = no epoch kept yet
        self.state: dict[str, torch.Tensor] | None = None
        self.stale = 0  # epochs since the last improvement

    def update(self, model: nn.Module, epoch: int, score: float) -> bool:
        """Offer `model` after `epoch` (1-based) with `score`; returns whether it was kept."""
        best = float("-inf") if self.score is None else self.score
        better = score >= best if self.ties == "last" else score > best  # a NaN score is never kept
        if better:
            self.score, self.epoch, self.state, self.stale = score, epoch, copy.deepcopy(model.state_dict()), 0
        else:
            self.stale += 1
        return better

    @property
    def stop(self) -> bool:
        return bool(self.patience) and self.stale >= self.patience

    def restore(self, model: nn.Module) -> bool:
        """Load the kept state into `model`; False (model untouched) when nothing was kept."""
        if self.state is None:
            return False
        model.load_state_dict(self.state)
        return True
