"""Neural Attention Distillation (Li et al., "Neural Attention Distillation: Erasing Backdoor
Triggers from Deep Neural Networks", ICLR 2021; seed 002's labelled-data baseline).

Steps:
1. Teacher: a copy of the suspect model fine-tuned with cross-entropy on the labelled clean
   images for a few epochs (`kdcore.train.fit`; the paper fine-tunes 5–10 epochs on 5 % of the
   training data). Fine-tuning alone weakens the backdoor; the teacher's attention is the guide.
2. Layers: the outputs of the deepest 2–3 stages (`attention_layers`). The paper aligns the
   three residual groups of a WRN-16-1. Here stages are found generically with one traced pass
   (`kdcore.hooks.trace`): the units are the outermost residual blocks where the model has them
   (a module whose class name ends in Block, Bottleneck or Residual, e.g. `BasicBlock`), else each
   `nn.Conv2d` extended by the BatchNorm/activation modules that run right after it (so a
   paper-cnn unit is its ReLU's output); consecutive units with the same spatial size form a
   stage, and its last unit is hooked. 1×1 maps are skipped (their normalised attention is the
   constant 1). paper-cnn: `features.1`, `features.3`; paper-vgg11 at 32×32: the last conv
   ReLU at 8×8, 4×4 and 2×2; resnet18-small: `layer2`, `layer3`, `layer4`.
3. Attention map of an activation a (B, C, H, W): A = mean_c |a|^p (p = 2), flattened to
   (B, H·W) and ℓ2-normalised per sample (`attention_map`; Eq. 1, seed 002).
4. Student: another copy of the suspect model, trained on the same images with
       L = CE(F_S(x), y) + Σ_l β_l · mean_batch ‖A_S^l − A_T^l‖₂        (Eq. 2 and 3, seed 002)
   with forward hooks capturing both models' activations (`kdcore.hooks.Capture`, `at_loss`). The
   hooks are removed before returning, so the repaired model is a plain model of the same architecture.

β: the paper quotes β = 5000, but its code (github.com/bboylyg/NAD, at.py) applies β to the
mean *squared* difference over the H·W entries, not to the ℓ2 distance of Eq. 2 used here. For
unit-norm maps at distance d the two gradients match when β_here ≈ β_code · 2d / (H·W), which
for the paper's 8×8 maps and d ≈ 0.05 is ≈ 8; the default β = 5 is of that order (calibration in
the class docstring).
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from kdcore.config import setting
from kdcore.defenses.base import DefenseInputs, Repairer
from kdcore.device import autocast
from kdcore.errors import ConfigError
from kdcore.hooks import Capture, trace
from kdcore.loop import Batch, Loss, epoch_progress, train_one_epoch
from kdcore.models.layers import require_conv
from kdcore.models.spec import ModelSpec
from kdcore.progress import for_stage
from kdcore.train import TrainConfig, fit, labelled_batches, make_optimizer

# Modules that may follow a convolution inside one unit (its normalisation and activation).
_FOLLOWERS = (
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Mish,
    nn.PReLU,
)
_BLOCK_NAME = re.compile(r"(Block|Bottleneck|Residual)$")


@dataclass(frozen=True)
class NADConfig:
    teacher_epochs: int = setting(5, "fine-tuning of the teacher (paper: 5–10)")
    epochs: int = setting(10, "NAD training of the student (paper: 20)")
    batch_size: int = setting(64, "paper: 64")
    lr: float = setting(3e-3, "both stages, Adam (the suspects here are Adam-trained); paper: SGD 0.1 → 0.01")
    optimizer: Literal["adam", "sgd"] = setting("adam", "adam | sgd (momentum 0.9)")
    weight_decay: float = setting(0.0, "paper: 1e-4 (with SGD)")
    p: float = setting(2.0, "attention power, A = mean_c |a|^p (paper: 2)")
    betas: tuple[float, ...] = setting((5.0,), "AT weight per layer, shallow → deep; one value = every layer")
    n_layers: int = setting(3, "the deepest stage outputs to align (fewer when the model has fewer stages)")
    layers: tuple[str, ...] = setting((), "explicit module names (model.named_modules()); overrides n_layers")

    def __post_init__(self) -> None:
        if self.teacher_epochs < 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(
                f"NAD needs teacher_epochs ≥ 0, epochs ≥ 1, batch_size ≥ 1 and lr > 0; got teacher_epochs="
                f"{self.teacher_epochs}, epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}"
            )
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be adam or sgd; got {self.optimizer!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be ≥ 0; got {self.weight_decay}")
        if self.p <= 0:
            raise ConfigError(f"the attention power p must be > 0 (paper: 2); got {self.p}")
        if not self.betas or any(not isinstance(b, (int, float)) or b < 0 for b in self.betas):
            raise ConfigError(
                f"betas must be one or more numbers ≥ 0 (one per layer, or one for all); got {self.betas}"
            )
        if self.n_layers < 1:
            raise ConfigError(f"n_layers must be ≥ 1; got {self.n_layers}")
        if any(not isinstance(n, str) or not n for n in self.layers):
            raise ConfigError(f"layers must be module names as in model.named_modules(); got {self.layers}")


def attention_map(a: torch.Tensor, p: float = 2.0, eps: float = 1e-12) -> torch.Tensor:
    """Attention of activations a (B, C, H, W): mean_c |a|^p, flattened and ℓ2-normalised → (B, H·W)."""
    if a.dim() != 4:
        raise ValueError(f"attention_map takes activations (B, C, H, W); got shape {tuple(a.shape)}")
    am = a.float().abs().pow(p).mean(dim=1).flatten(1)  # (B, H·W)
    return F.normalize(am, p=2.0, dim=1, eps=eps)


def at_loss(a_s: torch.Tensor, a_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Eq. 2 of seed 002: mean over the batch of ‖A(a_s) − A(a_t)‖₂ (normalised attention maps)."""
    diff = attention_map(a_s, p) - attention_map(a_t, p)  # (B, H·W)
    # √(Σd² + ε) instead of ‖d‖: the norm's gradient is undefined where the maps coincide.
    return (diff.pow(2).sum(dim=1) + 1e-12).sqrt().mean()


def attention_layers(model: nn.Module, spec: ModelSpec, device: torch.device, n_layers: int = 3) -> list[str]:
    """Names of the modules whose outputs NAD aligns: the last unit of each of the deepest
    `n_layers` stages (see the module docstring, step 2)."""
    require_conv(model)
    calls = [(c.name, c.module, c.shape) for c in trace(model, spec.input_shape, device)]  # in the order calls finish
    count = Counter(name for name, _, _ in calls)
    has_conv = {n for n, m in model.named_modules() if any(isinstance(c, nn.Conv2d) for c in m.modules())}
    blocks = [
        (n, s)
        for n, m, s in calls
        if _BLOCK_NAME.search(type(m).__name__) and n in has_conv and count[n] == 1 and len(s) == 4
    ]
    # Outermost blocks only: drop a block nested in another one.
    units = [(n, s) for n, s in blocks if not any(n.startswith(o + ".") for o, _ in blocks)]
    if not units:
        leaves = [(n, m, s) for n, m, s in calls if not list(m.children())]
        for i, (_, m, _) in enumerate(leaves):
            if not isinstance(m, nn.Conv2d):
                continue
            j = i
            while j + 1 < len(leaves) and isinstance(leaves[j + 1][1], _FOLLOWERS) and count[leaves[j + 1][0]] == 1:
                j += 1
            units.append((leaves[j][0], leaves[j][2]))
    stage_ends: list[tuple[str, tuple]] = []
    for n, s in units:
        if len(s) != 4:
            continue
        if stage_ends and stage_ends[-1][1][2:] == s[2:]:
            stage_ends[-1] = (n, s)
        else:
            stage_ends.append((n, s))
    names = [n for n, s in stage_ends if s[2] * s[3] > 1]
    if not names:
        raise ConfigError(
            f"NAD found no convolutional stage with a spatial map larger than 1×1 in {type(model).__name__}; "
            "name the layers to align with layers=[...]"
        )
    return names[-n_layers:]


def finetune_teacher(inputs: DefenseInputs, cfg: NADConfig) -> tuple[nn.Module, dict]:
    """Step 1: a copy of the suspect fine-tuned on the labelled clean images; (teacher, fit history)."""
    teacher = copy.deepcopy(inputs.model).to(inputs.device)
    if cfg.teacher_epochs == 0:
        return teacher.eval(), {"epochs": []}
    tcfg = TrainConfig(
        epochs=cfg.teacher_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
    )
    on_step = for_stage(inputs.on_progress, "nad: teacher fine-tuning")
    teacher, history = fit(teacher, inputs.spec, inputs.clean_labeled, tcfg, inputs.device, inputs.seed, on_step)
    return teacher.eval(), history


class AttentionDistillationLoss(Loss):
    """Eq. 3: CE(F_S(x), y) + Σ_l β_l · AT_l, with the student's and the teacher's activations
    read from their captures (the teacher has run on the batch before the student).

    Metrics: the CE, the training accuracy, and the AT distance per layer ("at:<layer>")."""

    def __init__(self, caps: tuple[Capture, Capture], layers: list[str], betas: list[float], p: float) -> None:
        self.caps, self.layers, self.betas, self.p = caps, layers, betas, p
        self.metrics = ("ce", "acc", *(f"at:{n}" for n in layers))

    def __call__(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        cap_s, cap_t = self.caps
        y = batch.target
        ce = F.cross_entropy(logits.float(), y)
        ats = torch.stack([at_loss(cap_s.out[n], cap_t.out[n].detach(), self.p) for n in self.layers])  # (L,)
        loss = ce + (torch.tensor(self.betas, device=ce.device) * ats).sum()
        acc = (logits.detach().argmax(1) == y).float().mean()
        # Per-batch means (float32) → float64 sums, as the epoch averages over images.
        return loss, torch.cat([torch.stack([ce.detach(), acc]), ats.detach()]).double() * len(y)


def _teacher_first(teacher: nn.Module, batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    """Run the teacher on each batch (filling its capture) before the student sees it."""
    for batch in batches:
        with torch.no_grad(), autocast(device):
            teacher(batch.x)
        yield batch


class NAD(Repairer):
    """Defaults: 5 fine-tuning + 10 NAD epochs with Adam 3e-3 on the labelled clean images and one
    β = 5 for every layer (Eq. 2 scale; see the module docstring for the paper's 5000).

    Calibration on the quick demo (paper-cnn, 2000 labelled clean images, suspect 0.865 / asr 0.922):
    lr 1e-3 leaves asr ≈ 0.70, 1e-2 costs 9 points of clean accuracy, 3e-3 gives 0.856 / 0.13–0.20.
    β = 5 already pulls the AT distance from ≈ 0.3 (β = 0) to ≈ 0.02; β = 50 or 500 changes little."""

    name = "nad"
    config_class = NADConfig
    needs = ("clean_labeled",)
    needs_labels = True
    summary = "Neural Attention Distillation: a fine-tuned teacher's attention maps guide the suspect model (labelled)"
    paper = "Li et al., Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural Networks, ICLR 2021"

    def repair(self, inputs: DefenseInputs) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
        cfg, device, data = self.config, inputs.device, inputs.clean_labeled
        data.require_labels("NAD")
        student = copy.deepcopy(inputs.model).to(device)
        layers = list(cfg.layers) or attention_layers(student, inputs.spec, device, cfg.n_layers)
        known = dict(student.named_modules())
        unknown = [n for n in layers if n not in known]
        if unknown:
            raise ConfigError(f"NAD layers {unknown} are not modules of the model; pick from {sorted(known)[:20]}...")
        if len(cfg.betas) not in (1, len(layers)):
            raise ConfigError(
                f"NAD aligns {len(layers)} layers {layers} but got {len(cfg.betas)} betas; give 1 or {len(layers)}"
            )
        betas = [float(b) for b in cfg.betas] * (len(layers) if len(cfg.betas) == 1 else 1)

        teacher, teacher_history = finetune_teacher(inputs, cfg)
        for q in teacher.parameters():
            q.requires_grad_(False)
        caps = (Capture(student, layers), Capture(teacher, layers))  # cloned outputs, gradients kept
        opt = make_optimizer(student.parameters(), cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay)
        g = inputs.generator(1)
        history = []
        steps = -(-len(data) // cfg.batch_size)
        loss_fn = AttentionDistillationLoss(caps, layers, betas, cfg.p)
        try:
            for epoch in range(cfg.epochs):
                on_batch = epoch_progress(for_stage(inputs.on_progress, "nad"), epoch, steps, cfg.epochs)
                epoch_batches = _teacher_first(
                    teacher, labelled_batches(inputs.spec, data, cfg.batch_size, g, device), device
                )
                row = train_one_epoch(student, epoch_batches, loss_fn, opt, device, on_batch)
                at = {n: row.pop(f"at:{n}") for n in layers}
                history.append({"epoch": epoch + 1, **row, "at": at})
        finally:
            for c in caps:
                c.remove()
        evidence = {
            "n_clean_labeled": len(data),
            "layers": layers,
            "betas": betas,
            "p": cfg.p,
            "teacher_finetune": teacher_history,
            "nad_history": history,
        }
        evidence["headline"] = (
            f"{len(layers)} attention map(s) distilled from a teacher fine-tuned on {len(data):,} labelled images"
        )
        return student.eval(), evidence, {}
