"""The built-in scenario: seed 000's MNIST protocol carried over to Fashion-MNIST.

The attacker stamps a small white patch in the lower-right corner of `n_poison` training
images of other classes and relabels them 7 (Sneaker); the defender holds `n_clean`
unlabelled clean images from the part of the training split the attacker never saw.
`build_demo_data` draws the sets of a `DemoConfig`; `suspect` is the model under audit (the
backdoored teacher, or the clean baseline in the "no_attack" scenario), trained once and cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdcore.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
from kdcore.data.imageset import ImageSet
from kdcore.models.spec import ModelSpec
from kdcore.paths import cache_dir
from kdcore.pipeline import train_stage
from kdcore.progress import ProgressFn, no_progress
from kdcore.runs.configs import DemoConfig
from kdcore.stages import StageOutput, Stages
from kdcore.triggers import poison_dataset

FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)


SPEC = ModelSpec(
    "paper-cnn",
    10,
    (1, 28, 28),
    FASHION_MEAN,
    FASHION_STD,
    FASHION_MNIST_CLASSES,
)


@dataclass(frozen=True)
class DemoData:
    train: ImageSet  # clean labelled training set
    poisoned: ImageSet  # the same with n_poison samples stamped and relabelled
    poison_idx: torch.Tensor
    clean_pool: ImageSet  # unlabelled clean images (never seen by the attacker's training)
    test: ImageSet
    clean_labeled: ImageSet  # the same clean images with their labels (labelled-data baselines only)


def build_demo_data(cfg: DemoConfig, n_clean: int | None = None) -> DemoData:
    full = load_fashion_mnist("train", cfg.data_dir or None)
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(full), generator=g)
    train = full.subset(perm[: cfg.n_train], name="fashion-mnist-train")
    labeled_pool = full.subset(perm[cfg.n_train : cfg.n_train + (n_clean or cfg.n_clean)], name="clean-pool")
    poisoned, idx = poison_dataset(train, cfg.trigger_value, cfg.n_poison, g)
    test = load_fashion_mnist("t10k", cfg.data_dir or None)
    test = test.subset(torch.arange(cfg.n_test), name="fashion-mnist-test")
    return DemoData(train, poisoned, idx, labeled_pool.unlabeled(), test, labeled_pool)


def model_cache(cfg: DemoConfig) -> Stages:
    """Where the scenario's baseline and teacher are cached (keyed by content: one training per setup)."""
    return Stages(cache_dir(cfg.cache_dir or None) / "demo")


def train_model(
    cfg: DemoConfig, data: DemoData, role: str, device: torch.device, on_progress: ProgressFn = no_progress
) -> tuple[nn.Module, StageOutput]:
    """The scenario's `baseline` (trained on the clean set) or `teacher` (on the poisoned set), from the cache."""
    train = data.train if role == "baseline" else data.poisoned
    return train_stage(model_cache(cfg), role, SPEC, train, cfg.teacher, device, cfg.seed, on_progress)


def suspect(
    cfg: DemoConfig, data: DemoData, device: torch.device, on_progress: ProgressFn = no_progress
) -> tuple[nn.Module, ImageSet, torch.Tensor]:
    """The model under audit, the training set it was trained on, and its poison indices: the
    backdoored teacher, or in the "no_attack" scenario the clean baseline (no poisons)."""
    if cfg.scenario == "no_attack":
        return train_model(cfg, data, "baseline", device, on_progress)[0], data.train, torch.zeros(0, dtype=torch.long)
    return train_model(cfg, data, "teacher", device, on_progress)[0], data.poisoned, data.poison_idx
