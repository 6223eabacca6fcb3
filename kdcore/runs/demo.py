"""The built-in scenario: seed 000's MNIST protocol carried over to Fashion-MNIST.

The attacker stamps a small white patch in the lower-right corner of `n_poison` training
images of other classes and relabels them 7 (Sneaker); the defender holds `n_clean`
unlabelled clean images from the part of the training split the attacker never saw.

Scenario "no_attack" (as in the sweep): the suspect is the clean-trained baseline and the training
set is clean, so every alarm is a false one. `blind`: the audit also gathers the verdict's
label-free evidence (kdcore.blind) as if the trigger were unknown; the trigger then only evaluates
(asr, poison_acc), and the demo's own poison indices score every detector.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from kdcore.blind import add_to_report, blind_audit, check_nc_params
from kdcore.config import from_dict, setting
from kdcore.data.builtin import load_fashion_mnist
from kdcore.data.imageset import ImageSet
from kdcore.errors import ConfigError
from kdcore.models.spec import ModelSpec
from kdcore.paths import cache_dir
from kdcore.pipeline import KDConfig, run_kd_pipeline, train_stage
from kdcore.progress import ProgressFn, no_progress
from kdcore.runs.common import environment, start_run, write_report
from kdcore.runs.context import RunContext
from kdcore.stages import Stages
from kdcore.train import TrainConfig
from kdcore.triggers import BadNets, Trigger, poison_dataset
from kdcore.views import write_views

FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
# What `--quick` changes; everything else keeps DemoConfig's defaults.
QUICK = {
    "quick": True,
    "n_train": 10_000,
    "n_clean": 2_000,
    "n_poison": 200,
    "n_test": 5_000,
    "teacher": {"epochs": 5},
    "kd": {"distill": {"epochs": 12}, "finetune": {"epochs": 3}},
}


@dataclass(frozen=True)
class DemoConfig:
    quick: bool = setting(False, "the quick setup (DemoConfig.preset(quick=True))")
    seed: int = setting(0, "random seed")
    scenario: Literal["attack", "no_attack"] = setting(
        "attack", "attack: the suspect is trained on poisoned data; no_attack: it is the clean baseline"
    )
    blind: bool = setting(False, "also audit as if the trigger were unknown: a verdict from label-free evidence")
    neural_cleanse: dict = setting(factory=dict, help="the verdict's Neural Cleanse settings (kdcore defend --help)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    data_dir: str = setting("", 'Fashion-MNIST IDX folder; "" = /usr/share/datasets/fashion-mnist')
    cache_dir: str = setting("", 'trained baseline/teacher cache; "" = $KDAUDIT_HOME/cache')
    n_train: int = setting(50_000, "labelled (possibly poisoned) training images")
    n_clean: int = setting(3_000, "unlabelled clean images for distillation, from the other 10,000")
    n_poison: int = setting(100, "poisoned training images")
    n_test: int = setting(10_000, "test images")
    trigger: dict = setting(factory=lambda: BadNets(target=7, size=3).to_dict(), help="the attack (Trigger.to_dict())")
    teacher: TrainConfig = setting(factory=lambda: TrainConfig(epochs=8))
    kd: KDConfig = setting(factory=KDConfig)

    def __post_init__(self) -> None:
        check_nc_params(self.neural_cleanse)
        if not 100 <= self.n_train <= 59_000:
            raise ConfigError(f"n_train must be in 100..59000; got {self.n_train}")
        if not 10 <= self.n_clean <= 60_000 - self.n_train:
            raise ConfigError(
                f"n_clean must be in 10..{60_000 - self.n_train} (the images not used for training); got {self.n_clean}"
            )
        if not 0 <= self.n_poison <= self.n_train // 2 or not 10 <= self.n_test <= 10_000:
            raise ConfigError(
                f"n_poison ≤ n_train/2 and 10 ≤ n_test ≤ 10000 required; got {self.n_poison}, {self.n_test}"
            )
        Trigger.from_dict(self.trigger).check_classes(10)
        if self.scenario not in ("attack", "no_attack"):
            raise ConfigError(f"scenario must be attack or no_attack; got {self.scenario!r}")

    @classmethod
    def preset(cls, quick: bool = False, **overrides) -> DemoConfig:
        """The full demo, or `quick`: 10k training images, 2% poisons, fewer epochs (< 3 min, 2 CPU cores).
        `overrides` (None = keep) merge into the preset, nested mappings setting by setting."""
        base = from_dict(cls, QUICK) if quick else cls()
        return from_dict(cls, {k: v for k, v in overrides.items() if v is not None}, base=base)

    @property
    def trigger_value(self) -> Trigger:
        return Trigger.from_dict(self.trigger)


SPEC = ModelSpec(
    "paper-cnn",
    10,
    (1, 28, 28),
    FASHION_MEAN,
    FASHION_STD,
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
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


def run_demo(cfg: DemoConfig, run_dir: str | Path, on_progress: ProgressFn = no_progress) -> dict:
    with start_run(run_dir, "demo", cfg, cfg.device) as (run_dir, device, resolved, t0):
        on_progress("prepare", 0, 1, {})
        data = build_demo_data(cfg)
        on_progress("prepare", 1, 1, {})
        cache = Stages(cache_dir(cfg.cache_dir or None) / "demo")
        baseline, b_st = train_stage(cache, "baseline", SPEC, data.train, cfg.teacher, device, cfg.seed, on_progress)
        attack = cfg.scenario == "attack"
        if attack:
            teacher, t_st = train_stage(
                cache, "teacher", SPEC, data.poisoned, cfg.teacher, device, cfg.seed, on_progress
            )
            train, poison_idx, references = data.poisoned, data.poison_idx, {"baseline": baseline}
        else:  # the clean baseline is the suspect: no poisons, and no second copy of it to evaluate
            teacher, t_st = baseline, b_st
            train, poison_idx, references = data.train, torch.zeros(0, dtype=torch.long), {}
        out = run_kd_pipeline(
            teacher,
            SPEC,
            data.clean_pool,
            cfg.kd,
            Stages(run_dir / "stages"),
            device,
            train=train,
            test=data.test,
            trigger=cfg.trigger_value,
            poison_idx=poison_idx,
            references=references,
            seed=cfg.seed,
            on_progress=on_progress,
            run_dir=run_dir,
        )
        out.stages = {"baseline": b_st, "teacher": t_st, **out.stages}
        report = out.report()
        if cfg.blind:
            student, s_spec = out.models["student"]
            blind = blind_audit(
                teacher, student, SPEC, data.clean_pool, device,
                table=out.table, train=train, poison_idx=poison_idx, student_spec=s_spec, seed=cfg.seed,
                on_progress=on_progress, nc_params=cfg.neural_cleanse,
            )  # fmt: skip
            add_to_report(report, blind, run_dir, trigger_given=True)
        on_progress("view", 0, 1, {})  # a stage of its own in the job log and the ETA
        views_s = write_views(
            RunContext(run_dir, "demo", resolved, SPEC, teacher, train, data.test, cfg.trigger_value, poison_idx),
            teacher_file=t_st.dir / "model.safetensors",
        )
        report.update(
            kind="demo",
            config=resolved,
            **environment(device),
            data={
                "train": len(data.train),
                "scenario": cfg.scenario,
                "poisons": len(poison_idx),
                "clean_unlabeled": len(data.clean_pool),
                "test": len(data.test),
                "trigger": cfg.trigger_value.describe(),
                "dataset": "Fashion-MNIST (IDX)",
            },
            wall_s=round(time.perf_counter() - t0, 2),
            views_s=round(views_s, 2),
        )
        write_report(run_dir, report)
        return report
