"""Step 1 of seed 000 (Yoshida & Fujino, AISec 2020): distil the suspect teacher into a student
using only unlabelled clean images and the soft-target loss.

    1. Hold out a slice of the unlabelled images for model selection (never the test set).
    2. Teacher logits on every unlabelled image, computed once and cached (inputs are not
       augmented), or per batch when augmentation is on.
    3. Each step: loss = T² · KL(softmax(t/T) ‖ softmax(s/T))   (Hinton et al. 2015; T = 20).
    4. After each epoch: teacher–student top-1 agreement on the held-out slice; keep the best.

Clean images mostly do not carry the trigger, so the student learns the teacher's clean
behaviour without its backdoor response.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kdcore.config import setting
from kdcore.data.imageset import ImageSet
from kdcore.device import autocast
from kdcore.errors import ConfigError, InputError
from kdcore.loop import Batch, BestEpoch, Loss, epoch_progress, train_one_epoch
from kdcore.models.spec import ModelSpec
from kdcore.progress import StepFn
from kdcore.train import batches, make_optimizer, predict_logits


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = setting(30, "distillation epochs (paper: 50)", min=1)
    batch_size: int = setting(128, "distillation batch size", min=1)
    lr: float = setting(1e-3, "distillation Adam learning rate")
    temperature: float = setting(20.0, "KD temperature T (paper: 20)")
    holdout_fraction: float = setting(0.1, "of the unlabelled images, for model selection by agreement")
    augment: bool = setting(False, "random ±2 px shifts during distillation; forces the teacher to run on every batch")
    cache_teacher: bool = setting(True, "False only for the naive-loop benchmark")

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(
                "distillation needs epochs ≥ 1, batch_size ≥ 1 and lr > 0; got "
                f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr:g}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0; got {self.temperature}")
        if not 0.0 <= self.holdout_fraction < 0.5:
            raise ConfigError(f"holdout_fraction must be in [0, 0.5); got {self.holdout_fraction}")


@dataclass(frozen=True)
class DistillResult:
    n_images: int  # unlabelled images used for training
    n_holdout: int  # held out for selection
    best_epoch: int
    holdout_agreement: float  # top-1 teacher–student agreement at the selected epoch
    final_loss: float
    images_per_s: float  # KD training throughput
    history: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["history"] = list(self.history)
        return d


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch (soft targets only).

    The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al.)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


class SoftTargetKL(Loss):
    """`kd_loss` at a fixed temperature (soft targets; the batch target is the teacher's logits).

    t_squared=False divides Hinton's T² back out, giving plain KL at T (BCU's official code);
    written as a division after `kd_loss` so its numbers stay bit-identical to that loop's."""

    def __init__(self, temperature: float, t_squared: bool = True) -> None:
        self.temperature, self.t_squared = temperature, t_squared

    def __call__(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = self.temperature
        loss = kd_loss(logits, batch.target, t)
        return (loss if self.t_squared else loss / (t * t)), None


class HardLabelKD(Loss):
    """Cross-entropy on the teacher's top-1 class ("hard" labels; BCU §4.3 Table 5)."""

    def __call__(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return F.cross_entropy(logits.float(), batch.target.argmax(1)), None


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each uint8 image (B, C, H, W) by up to ±max_shift pixels, zero-filled."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def kd_batches(
    teacher: nn.Module,
    spec: ModelSpec,
    student_spec: ModelSpec,
    images: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    cached: torch.Tensor | None = None,
    augment: bool = False,
    amp: bool = True,
) -> Iterator[Batch]:
    """One shuffled pass over uint8 `images` (N, C, H, W) for distillation: the student's
    normalised input and the teacher's float32 logits, from `cached` (N, K) when given, else from
    the teacher on this very batch (under autocast when `amp`). Draws from `generator` in the
    order: the permutation, then each batch's random shifts."""
    for idx in batches(len(images), batch_size, generator):
        x_u8 = images[idx]
        if augment:
            x_u8 = random_shift(x_u8, generator)
        x = x_u8.to(device, non_blocking=True)
        if cached is not None:
            t_logits = cached[idx].to(device, non_blocking=True)
        else:
            with torch.inference_mode(), autocast(device, amp):
                t_logits = teacher(spec.normalize(x)).float()
            t_logits = t_logits.clone()  # leave inference mode for autograd
        yield Batch(student_spec.normalize(x), t_logits)


def agreement(
    student: nn.Module, spec: ModelSpec, images: torch.Tensor, teacher_pred: torch.Tensor, device: torch.device
) -> float:
    """Top-1 agreement of `student` with the teacher's predictions `teacher_pred` on `images`."""
    return (predict_logits(student, spec, images, device).argmax(1) == teacher_pred).float().mean().item()


def distill(
    teacher: nn.Module,
    student: nn.Module,
    spec: ModelSpec,
    unlabeled: ImageSet,
    cfg: DistillConfig,
    device: torch.device,
    seed: int = 0,
    on_step: StepFn | None = None,
    student_spec: ModelSpec | None = None,
) -> tuple[nn.Module, DistillResult]:
    """Train `student` to match `teacher` on `unlabeled` images. Returns the selected student."""
    if len(unlabeled) < 2:
        raise InputError(f"Distillation needs unlabelled images; got {len(unlabeled)}")
    s_spec = student_spec or spec
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(unlabeled), generator=g)
    n_hold = round(cfg.holdout_fraction * len(unlabeled))
    hold, train = unlabeled.subset(perm[:n_hold]), unlabeled.subset(perm[n_hold:])
    teacher.to(device).eval()
    student.to(device)
    hold_pred = predict_logits(teacher, spec, hold.images, device).argmax(1) if n_hold else None
    cached = None
    if cfg.cache_teacher and not cfg.augment:
        cached = predict_logits(teacher, spec, train.images, device)  # (N, K) float32, CPU
    opt = make_optimizer(student.parameters(), "adam", cfg.lr)
    loss_fn = SoftTargetKL(cfg.temperature)
    steps = -(-len(train) // cfg.batch_size)
    history, best = [], BestEpoch(ties="last")  # ties go to the later (lower-loss) epoch
    t0, seen = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        epoch_batches = kd_batches(teacher, spec, s_spec, train.images, cfg.batch_size, g, device, cached, cfg.augment)
        on_batch = epoch_progress(on_step, epoch, steps, cfg.epochs)
        row = {"epoch": epoch + 1, **train_one_epoch(student, epoch_batches, loss_fn, opt, device, on_batch)}
        seen += len(train)
        if hold_pred is not None:
            row["holdout_agreement"] = agreement(student, s_spec, hold.images, hold_pred, device)
            best.update(student, epoch + 1, row["holdout_agreement"])
        history.append(row)
    elapsed = time.perf_counter() - t0
    kept = best.restore(student)
    result = DistillResult(
        n_images=len(train),
        n_holdout=n_hold,
        best_epoch=best.epoch if kept else cfg.epochs,
        holdout_agreement=best.score if kept else float("nan"),
        final_loss=history[-1]["loss"],
        images_per_s=seen / max(elapsed, 1e-9),
        history=tuple(history),
    )
    return student.eval(), result
