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

import copy
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kdcore.config import setting
from kdcore.data.imageset import ImageSet
from kdcore.device import autocast
from kdcore.errors import ConfigError, InputError
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
            raise ConfigError(f"distillation needs epochs ≥ 1, batch_size ≥ 1, lr > 0; got {self}")
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


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each uint8 image (B, C, H, W) by up to ±max_shift pixels, zero-filled."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


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
    steps = -(-len(train) // cfg.batch_size)
    history, best = [], (-1.0, None, 0)
    t0, seen = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        student.train()
        running = 0.0
        for i, idx in enumerate(batches(len(train), cfg.batch_size, g)):
            x_u8 = train.images[idx]
            if cfg.augment:
                x_u8 = random_shift(x_u8, g)
            x = x_u8.to(device, non_blocking=True)
            if cached is not None:
                t_logits = cached[idx].to(device, non_blocking=True)
            else:
                with torch.inference_mode(), autocast(device):
                    t_logits = teacher(spec.normalize(x)).float()
                t_logits = t_logits.clone()  # leave inference mode for autograd
            with autocast(device):
                s_logits = student(s_spec.normalize(x))
            loss = kd_loss(s_logits, t_logits, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            batch_loss = loss.item()  # the one host sync per step
            running += batch_loss * len(idx)
            seen += len(idx)
            if on_step is not None:
                on_step(epoch * steps + i + 1, cfg.epochs * steps, {"epoch": epoch + 1, "loss": batch_loss})
        row = {"epoch": epoch + 1, "loss": running / len(train)}
        if hold_pred is not None:
            s_pred = predict_logits(student, s_spec, hold.images, device).argmax(1)
            row["holdout_agreement"] = (s_pred == hold_pred).float().mean().item()
            if row["holdout_agreement"] >= best[0]:  # ties go to the later (lower-loss) epoch
                best = (row["holdout_agreement"], copy.deepcopy(student.state_dict()), epoch + 1)
        history.append(row)
    elapsed = time.perf_counter() - t0
    if best[1] is not None:
        student.load_state_dict(best[1])
    result = DistillResult(
        n_images=len(train),
        n_holdout=n_hold,
        best_epoch=best[2] if best[1] is not None else cfg.epochs,
        holdout_agreement=best[0] if best[1] is not None else float("nan"),
        final_loss=history[-1]["loss"],
        images_per_s=seen / max(elapsed, 1e-9),
        history=tuple(history),
    )
    return student.eval(), result
