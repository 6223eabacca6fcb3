"""Neural Cleanse: reverse-engineer a trigger for every class, flag the class whose trigger is
anomalously small (Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in
Neural Networks", IEEE S&P 2019; seed 004 uses its recovered "synthetic triggers", Fig. 1).

A backdoored class needs only a small patch to capture any input; a clean class needs a large
one. For every class c (the `classes_per_pass` classes of a pass optimised together: one parameter
tensor of shape (K, ...), each step one forward pass of K·B stamped images, the loss summed over
classes, so each class keeps its own gradient):

1. Parameterise a mask m = tanh(a)/2 + 1/2 ∈ [0, 1]^(H×W) and a pattern
   p = 255·(tanh(b)/2 + 1/2) ∈ [0, 255]^(C×H×W); stamp x' = (1 − m)·x + m·p on clean images x
   (pixel space, then the model's normalisation).
2. Minimise CE(f(x'), c) + λ_c·‖m‖₁ with Adam (lr 0.1, betas (0.5, 0.9), the authors' code),
   on mini-batches of `batch_size` drawn from `n_images` clean unlabelled images, for at most
   `steps` steps.
3. λ_c schedule (the paper's dynamic cost, in rounds of `round_steps` steps instead of epochs):
   start at `init_cost`; after `patience` rounds in a row whose mean attack success is
   ≥ `success_threshold`, λ_c ×= `cost_multiplier`; after `patience` rounds below it,
   λ_c ÷= `cost_multiplier`^1.5. The mask kept is the smallest-ℓ1 end-of-round mask among the
   rounds that reached the success threshold (the final mask if none did).
4. Early stop, per class (the authors' `early_stop`, in rounds): once c has a mask that reached
   the success threshold and its best ℓ1 has not shrunk by more than `early_stop_delta` (1 %)
   for `early_stop_patience` rounds in a row, c stops: its parameters and λ_c stop changing, it
   leaves the batch (the next steps forward fewer images) and its best mask is kept. The table's
   `steps` says how many steps each class ran. The classes are independent, so a class that
   stops changes nothing for the others.
5. ℓ1_c = Σ m. Anomaly index (MAD, consistency constant 1.4826):
   index_c = |median − ℓ1_c| / (1.4826·MAD); classes with ℓ1 below the median and index >
   `threshold` (2, the paper's) are flagged as backdoor targets.
6. Each recovered trigger is stamped (uint8, `apply_recovered`) on held-out clean images the
   optimisation never saw; its success is the share of those not already predicted c that flip to c.

Departures from the authors' code, for speed on a CPU: at most `steps` steps on a few hundred
images, rounds of 10 steps and patience 3 rounds (theirs: epochs of ~31 steps, patience 5); the
early stop after 5 rounds without 1 % progress (theirs: 25 epochs, and only once λ has gone both up
and down; replayed on a recorded run of the demo teacher, that condition made 1 class of 10 stop
20 steps later and changed no finding). `success_threshold` stays at their 0.99: on the BadNets demo teacher
(seeds 0–3) it flagged exactly the target every time (index 2.96–4.00), while 0.95 gave higher
indices (2.74–4.37) but flagged a clean class too in one seed of four. `classes_per_pass=1` and
`early_stop_patience=0` give back the authors' loop: one class after another, every step
(benchmarks/blind_cost.py times both).

Evidence: the per-class table, flagged classes, the most anomalous class; images: mask, pattern
and trigger (m·p, what gets stamped) of every class and one stamped held-out image for the most
anomalous class; raw tensors `recovered.*` (float mask and pattern per class; saved by defend as
evidence/recovered.safetensors, `kdcore.triggers.recovered`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.config import setting
from kdcore.defenses.base import DefenseInputs, Inspector
from kdcore.errors import ConfigError, InputError
from kdcore.models.spec import ModelSpec
from kdcore.train import predict_logits
from kdcore.triggers.recovered import apply_recovered, recovered_tensors

MAD_CONSISTENCY = 1.4826  # MAD → σ for normal data
MEANAD_CONSISTENCY = 1.253314  # mean absolute deviation → σ (the fallback when MAD = 0)
_EPS = 1e-6  # keeps atanh finite at the initial values


@dataclass(frozen=True)
class NeuralCleanseConfig:
    n_images: int = setting(300, "clean unlabelled images the triggers are optimised on")
    n_holdout: int = setting(200, "other clean images the recovered triggers are tested on")
    batch_size: int = setting(32, "images per step; each is stamped with every class's trigger of the pass")
    steps: int = setting(300, "Adam steps per class, the most (a class that stops early runs fewer)")
    lr: float = setting(0.1, "Adam learning rate on the tanh parameters (authors' code)")
    init_cost: float = setting(1e-3, "λ at the start, per unit of mask ℓ1 (pixels)")
    cost_multiplier: float = setting(2.0, "λ ×= this when succeeding, ÷= this^1.5 when failing (authors' code)")
    patience: int = setting(3, "rounds of success (or failure) in a row before λ changes")
    round_steps: int = setting(10, "steps per round (the paper's epoch): success averaged, λ updated, best mask kept")
    success_threshold: float = setting(0.99, "mean attack success at which a mask counts as a trigger")
    threshold: float = setting(2.0, "anomaly index above which a small-norm class is flagged")
    classes_per_pass: int = setting(
        10, "classes optimised together (memory: classes × batch_size images); 1 = one class after another"
    )
    early_stop_patience: int = setting(
        5, "rounds without progress after which a class that reached the success threshold stops; 0 = never", min=0
    )
    early_stop_delta: float = setting(0.01, "progress: the best mask's ℓ1 shrinks by more than this share")

    def __post_init__(self) -> None:
        ints = ("n_images", "n_holdout", "batch_size", "steps", "patience", "round_steps", "classes_per_pass")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"neural-cleanse {name} must be a whole number ≥ 1; got {v!r}")
        if self.round_steps > self.steps:
            raise ConfigError(f"neural-cleanse round_steps ({self.round_steps}) must not exceed steps ({self.steps})")
        for name in ("lr", "init_cost", "threshold"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"neural-cleanse {name} must be a positive number; got {v!r}")
        if not isinstance(self.cost_multiplier, (int, float)) or not self.cost_multiplier > 1:
            raise ConfigError(f"neural-cleanse cost_multiplier must be > 1; got {self.cost_multiplier!r}")
        if not isinstance(self.success_threshold, (int, float)) or not 0 < self.success_threshold <= 1:
            raise ConfigError(f"neural-cleanse success_threshold must be in (0, 1]; got {self.success_threshold!r}")
        p = self.early_stop_patience
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ConfigError(f"neural-cleanse early_stop_patience must be a whole number ≥ 0 (0 = never); got {p!r}")
        if not isinstance(self.early_stop_delta, (int, float)) or not 0 <= self.early_stop_delta < 1:
            raise ConfigError(f"neural-cleanse early_stop_delta must be in [0, 1); got {self.early_stop_delta!r}")


def mad_anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """Anomaly index of each value: |median − x| / (1.4826 · MAD), MAD = median |x − median|.

    The median of an even count is the mean of the two middle values (numpy's, as the authors'
    code). When MAD is 0 (more than half the values equal) the scale falls back to
    1.253314 · mean |x − median| (Iglewicz & Hoaglin's modified z-score); when that is 0 too
    (all values equal) every index is 0."""
    x = torch.as_tensor(norms, dtype=torch.float64).flatten()
    if x.numel() == 0:
        raise InputError("mad_anomaly_index needs at least one value")
    med = x.quantile(0.5)
    dev = (x - med).abs()
    scale = MAD_CONSISTENCY * dev.quantile(0.5)
    if scale == 0:
        scale = MEANAD_CONSISTENCY * dev.mean()
    if scale == 0:
        return torch.zeros_like(x)
    return dev / scale


def _normalize(spec: ModelSpec, x: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) in [0, 255] → the model's input; differentiable (`spec.normalize` takes uint8)."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x / 255.0 - mean) / std


def _to_param(v: torch.Tensor) -> torch.Tensor:
    """v ∈ [0, 1] → a with tanh(a)/2 + 1/2 = v."""
    return torch.atanh((v - 0.5) * (2 - _EPS))


def _adam_rows(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, t: int, lr: float
) -> None:
    """torch.optim.Adam's update (betas (0.5, 0.9), eps 1e-8; bias-corrected at step t) of rows `rows` of
    p by their gradient g, with their moments m and v. The other rows (classes that stopped) keep
    their values and moments: a stopped class's parameters stop changing."""
    b1, b2 = 0.5, 0.9
    m[rows] = b1 * m[rows] + (1 - b1) * g
    v[rows] = b2 * v[rows] + (1 - b2) * g * g
    p[rows] -= lr / (1 - b1**t) * m[rows] / ((v[rows] / (1 - b2**t)).sqrt() + 1e-8)


def reverse_engineer(
    model: nn.Module,
    spec: ModelSpec,
    images: torch.Tensor,
    classes: list[int],
    cfg: NeuralCleanseConfig,
    device: torch.device,
    generator: torch.Generator,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Optimise one (mask, pattern) per class in `classes` on uint8 `images`, all classes in one batch;
    a class that stops early (module docstring, step 4) leaves the batch.

    Returns CPU tensors: mask (K, H, W), pattern (K, C, H, W), l1 (K,), reached (K,) bool
    (a round reached the success threshold), cost (K,) final λ, steps (K,) the Adam steps each class
    ran (`cfg.steps` unless it stopped early). `model` must be in eval mode with parameters that need
    no gradient."""
    k = len(classes)
    c, h, w = images.shape[1:]
    target = torch.tensor(classes, device=device)
    mask_p = _to_param(torch.rand(k, 1, h, w, generator=generator)).to(device)  # (K, 1, H, W)
    pattern_p = _to_param(torch.rand(k, c, h, w, generator=generator)).to(device)  # (K, C, H, W)
    moments = [torch.zeros_like(t) for t in (mask_p, mask_p, pattern_p, pattern_p)]  # Adam's m and v of each
    cost = torch.full((k,), cfg.init_cost, device=device)
    up, down, stall, steps = torch.zeros(4, k, dtype=torch.long, device=device)  # stall: rounds without progress
    best_l1 = torch.full((k,), math.inf, device=device)
    progress_l1 = torch.full((k,), math.inf, device=device)  # the best ℓ1 when the class last made progress
    best_mask = torch.zeros(k, 1, h, w, device=device)
    best_pattern = torch.zeros(k, c, h, w, device=device)
    round_succ = torch.zeros(k, device=device)
    round_l1 = torch.zeros(k, device=device)
    active = torch.arange(k, device=device)  # the classes still optimised, (A,)
    n = len(images)
    order = torch.randperm(n, generator=generator)
    pos = 0
    for step in range(1, cfg.steps + 1):
        if pos + min(cfg.batch_size, n) > n:
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += len(idx)
        a, b = len(active), len(idx)
        x = images[idx].to(device).float()  # (B, C, H, W) in [0, 255]
        mp, pp = mask_p[active].requires_grad_(), pattern_p[active].requires_grad_()  # copies of the active rows
        mask = torch.tanh(mp) / 2 + 0.5  # (A, 1, H, W)
        pattern = (torch.tanh(pp) / 2 + 0.5) * 255  # (A, C, H, W)
        stamped = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]  # (A, B, C, H, W)
        logits = model(_normalize(spec, stamped.flatten(0, 1))).float().view(a, b, -1)  # (A, B, classes)
        ce = F.cross_entropy(logits.transpose(1, 2), target[active, None].expand(a, b), reduction="none").mean(1)
        l1 = mask.flatten(1).sum(1)  # (A,)
        loss = (ce + cost[active] * l1).sum()  # classes are independent; summing keeps each one's gradient
        grad_m, grad_p = torch.autograd.grad(loss, (mp, pp))
        with torch.no_grad():
            _adam_rows(mask_p, grad_m, *moments[:2], active, step, cfg.lr)
            _adam_rows(pattern_p, grad_p, *moments[2:], active, step, cfg.lr)
            round_succ[active] += (logits.argmax(-1) == target[active, None]).float().mean(1)
            round_l1[active] += l1
            steps[active] += 1
        if step % cfg.round_steps and step != cfg.steps:
            continue
        with torch.no_grad():  # end of a round, for the active classes i: best mask, λ, early stop
            i, r = active, (cfg.round_steps if step % cfg.round_steps == 0 else step % cfg.round_steps)
            succ, mean_l1 = round_succ[i] / r, round_l1[i] / r
            ok = succ >= cfg.success_threshold
            better = ok & (mean_l1 < best_l1[i])
            best_l1[i[better]] = mean_l1[better]
            best_mask[i[better]] = torch.tanh(mask_p[i[better]]) / 2 + 0.5
            best_pattern[i[better]] = (torch.tanh(pattern_p[i[better]]) / 2 + 0.5) * 255
            u, d = torch.where(ok, up[i] + 1, 0), torch.where(ok, 0, down[i] + 1)
            cost[i] = torch.where(u >= cfg.patience, cost[i] * cfg.cost_multiplier, cost[i])
            cost[i] = torch.where(d >= cfg.patience, cost[i] / cfg.cost_multiplier**1.5, cost[i])
            up[i], down[i] = torch.where(u >= cfg.patience, 0, u), torch.where(d >= cfg.patience, 0, d)
            gained = best_l1[i] < progress_l1[i] * (1 - cfg.early_stop_delta)
            progress_l1[i] = torch.where(gained, best_l1[i], progress_l1[i])
            stall[i] = torch.where(gained, 0, stall[i] + 1)
            if on_step is not None:
                on_step(step, {"success": succ.mean().item(), "mean_l1": mean_l1.mean().item(), "classes_running": a})
            if cfg.early_stop_patience:
                done = torch.isfinite(best_l1[i]) & (stall[i] >= cfg.early_stop_patience)
                active = i[~done]
            round_succ.zero_()
            round_l1.zero_()
        if len(active) == 0:
            if on_step is not None and step < cfg.steps:
                on_step(cfg.steps, {"classes_running": 0, "stopped_at_step": step})  # this pass is done
            break
    with torch.no_grad():
        reached = torch.isfinite(best_l1)
        final_mask = torch.tanh(mask_p) / 2 + 0.5
        final_pattern = (torch.tanh(pattern_p) / 2 + 0.5) * 255
        mask = torch.where(reached[:, None, None, None], best_mask, final_mask)
        pattern = torch.where(reached[:, None, None, None], best_pattern, final_pattern)
    return {
        "mask": mask[:, 0].cpu(),
        "pattern": pattern.cpu(),
        "l1": mask.flatten(1).sum(1).cpu(),
        "reached": reached.cpu(),
        "cost": cost.cpu(),
        "steps": steps.cpu(),
    }


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


class NeuralCleanse(Inspector):
    name = "neural-cleanse"
    config_class = NeuralCleanseConfig
    needs = ("unlabeled",)
    summary = "Neural Cleanse: per-class trigger reverse engineering, MAD anomaly index (Wang et al. 2019)"
    paper = "Wang et al., Neural Cleanse, IEEE S&P 2019 (synthetic triggers of seed 004)"

    def inspect(self, inputs: DefenseInputs) -> tuple[dict, dict[str, torch.Tensor]]:
        cfg, spec, device = self.config, inputs.spec, inputs.device
        pool = inputs.unlabeled.images
        if len(pool) < 2:
            raise InputError(
                f"neural-cleanse needs at least 2 unlabelled images (optimise + held out); got {len(pool)}"
            )
        # Split the pool: optimisation images and held-out images (shrunk in proportion if the pool is small).
        perm = torch.randperm(len(pool), generator=inputs.generator(1))
        n_hold = min(cfg.n_holdout, max(1, len(pool) * cfg.n_holdout // (cfg.n_images + cfg.n_holdout)))
        n_opt = min(cfg.n_images, len(pool) - n_hold)
        opt_images, hold_images = pool[perm[:n_opt]], pool[perm[n_opt : n_opt + n_hold]]

        model = copy.deepcopy(inputs.model).to(device).eval()
        model.requires_grad_(False)  # only the triggers are optimised (the copy; the input model is untouched)
        k_all = spec.num_classes
        chunks = [list(range(s, min(s + cfg.classes_per_pass, k_all))) for s in range(0, k_all, cfg.classes_per_pass)]
        total = cfg.steps * len(chunks)
        parts = []
        for i, classes in enumerate(chunks):

            def on_step(step: int, metrics: dict, done: int = i * cfg.steps) -> None:
                inputs.on_progress(self.name, done + step, total, metrics)

            parts.append(
                reverse_engineer(model, spec, opt_images, classes, cfg, device, inputs.generator(2 + i), on_step)
            )
        found = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        l1 = found["l1"]
        index = mad_anomaly_index(l1)
        median = float(l1.double().quantile(0.5))
        flagged = (l1.double() < median) & (index > cfg.threshold)
        top = int(torch.argmin(l1))  # below the median the index grows as ℓ1 shrinks

        hold_pred = predict_logits(model, spec, hold_images, device).argmax(1)
        success = []
        for c in range(k_all):
            victims = hold_images[hold_pred != c]
            if len(victims) == 0:
                success.append(None)
                continue
            stamped = apply_recovered(victims, found["mask"][c], found["pattern"][c])
            success.append(float((predict_logits(model, spec, stamped, device).argmax(1) == c).float().mean()))

        names = spec.names
        table = [
            {
                "class": c,
                "name": names[c],
                "l1": round(float(l1[c]), 3),
                "anomaly_index": round(float(index[c]), 3),
                "recovered_trigger_success": None if success[c] is None else round(success[c], 4),
                "reached_success_threshold": bool(found["reached"][c]),
                "final_cost": float(f"{float(found['cost'][c]):.4g}"),  # λ at the end
                "steps": int(found["steps"][c]),
                "flagged": bool(flagged[c]),
            }
            for c in range(k_all)
        ]
        flagged_list = [c for c in range(k_all) if flagged[c]]
        evidence = {
            "classes": table,
            "flagged": flagged_list,
            "flagged_names": [names[c] for c in flagged_list],
            "most_anomalous": {"class": top, "name": names[top], "anomaly_index": round(float(index[top]), 3)},
            "threshold": cfg.threshold,
            "median_l1": round(median, 3),
            "mad": round(float((l1.double() - median).abs().quantile(0.5)), 3),
            "n_optimised": int(n_opt),
            "n_holdout": int(n_hold),
            "mask_pixels": spec.input_shape[1] * spec.input_shape[2],  # the largest possible ℓ1
        }
        top_name, top_index = names[top], float(index[top])
        evidence["headline"] = (
            f"backdoor target: {', '.join(evidence['flagged_names'])} (index {top_index:.2f} > {cfg.threshold:g})"
            if flagged_list
            else f"no class flagged; most anomalous: {top_name} (anomaly index {top_index:.2f} ≤ {cfg.threshold:g})"
        )

        images = {}
        for c in range(k_all):
            m, p = found["mask"][c], found["pattern"][c]
            images[f"mask_{c}"] = _u8(m[None] * 255)
            images[f"pattern_{c}"] = _u8(p)
            images[f"trigger_{c}"] = _u8(m[None] * p)
        example = hold_images[hold_pred != top][:1]
        if len(example) == 0:
            example = hold_images[:1]
        images["stamped_example"] = apply_recovered(example, found["mask"][top], found["pattern"][top])[0]
        # The raw float triggers, so they can be used as a trigger (kdcore.triggers.recovered).
        raw = recovered_tensors(found["mask"], found["pattern"], list(range(k_all)), flagged, index)
        images |= {f"recovered.{key}": t for key, t in raw.items()}
        return evidence, images
