"""The work each stage of a run will do, from its config and the sizes of its sets: what the ETA of a
kind's first job goes by (`kdcore.jobs.eta`), before any earlier job has timed its stages.

A stage's size is counted in image passes: one image through a model's forward pass is 1, a training
step on one image 3 (forward, and a backward of about twice its cost). Per stage of a demo or audit:

    baseline, teacher      teacher.epochs × train × 3                    (the demo's supervised training)
    distill                distill.epochs × unlabelled × (1 − holdout) × 3  +  unlabelled (teacher, once)
    detox                  train × 2                                       (teacher and student)
    finetune               finetune.epochs × train × (1 − val) × 3
    evaluate               models × test × (2 with a trigger: clean and stamped)
    neural-cleanse         steps × batch × classes × 3                     (a mask per class, all at once;
                                                                           the most: classes stop early)
    activation-clustering  train                                           (one forward pass; k-means aside)
    recovered-trigger      TRIGGER_IMAGES × (classes + 1) × 2              (teacher and student, clean + stamped)
    view                   NORM_IMAGES × 3                                 (the ℓp-norm sample of three models)

'prepare' (reading files) and 'starting' (the worker's process) are not sized: their time says
nothing about the rest. The sizes are rough on purpose: the ETA scales them by the seconds per
pass that this job's own stages measured, so only their ratios matter.
"""

from __future__ import annotations

from kdcore.config import from_dict
from kdcore.defenses.neural_cleanse import NeuralCleanseConfig
from kdcore.pipeline import KDConfig
from kdcore.runs.configs import AuditConfig, DemoConfig
from kdcore.verdict.gather import verdict_nc
from kdcore.verdict.recovered_trigger import TRIGGER_IMAGES
from kdcore.views import NORM_IMAGES

Sizes = tuple[tuple[str, float], ...]  # (stage, image passes), in run order
FORWARD, TRAIN = 1.0, 3.0
SET_SIZES = ("unlabeled", "train", "test", "classes")  # what an audit's 'prepare' reports when it ends


def _kd(kd: KDConfig, unlabeled: int, train: int, test: int, models: int, trigger: bool) -> list:
    d, f = kd.distill, kd.finetune
    sizes = [("distill", d.epochs * unlabeled * (1 - d.holdout_fraction) * TRAIN + unlabeled * FORWARD)]
    if train:
        sizes += [
            ("detox", train * 2 * FORWARD),
            ("finetune", f.epochs * train * (1 - f.val_fraction) * TRAIN),
        ]
    if test:
        sizes.append(("evaluate", (models + bool(train)) * test * (2 if trigger else 1) * FORWARD))
    return sizes


def _verdict(nc_params: dict, classes: int, train: int) -> list:
    nc = from_dict(NeuralCleanseConfig, verdict_nc(nc_params))
    sizes = [("neural-cleanse", nc.steps * nc.batch_size * classes * TRAIN)]
    sizes += [("activation-clustering", train * FORWARD)] if train else []
    # the recovered trigger: teacher and student on the clean images, then on them stamped with each class's
    return [*sizes, ("recovered-trigger", TRIGGER_IMAGES * (classes + 1) * 2 * FORWARD)]


def demo_sizes(cfg: DemoConfig) -> Sizes:
    train = cfg.n_train * cfg.teacher.epochs * TRAIN
    attack = cfg.scenario == "attack"
    sizes = [("baseline", train)] + ([("teacher", train)] if attack else [])
    # evaluated: teacher, student (+ finetuned, counted by _kd) and, under attack, the clean baseline
    sizes += _kd(cfg.kd, cfg.n_clean, cfg.n_train, cfg.n_test, 2 + attack, trigger=True)
    if cfg.blind:
        sizes += _verdict(cfg.neural_cleanse, 10, cfg.n_train)
    return (*sizes, ("view", NORM_IMAGES * 3 * FORWARD))


def audit_sizes(cfg: AuditConfig, unlabeled: int, train: int, test: int, classes: int) -> Sizes:
    sizes = _kd(cfg.kd, unlabeled, train, test, 2, trigger=cfg.trigger is not None)
    if cfg.verdict or cfg.blind or cfg.trigger is None:
        sizes += _verdict(cfg.neural_cleanse, classes, train)
    return (*sizes, ("view", NORM_IMAGES * 3 * FORWARD))


def stage_sizes(kind: str, config: dict, reported: dict) -> Sizes | None:
    """The sizes of a `kind` job's stages; `reported`: the metrics of a progress report. None while
    they cannot be known yet (an audit's set sizes come with the end of its 'prepare'); () for a
    kind without sizes (its first job's ETA is its current stage's)."""
    if kind == "demo":
        return demo_sizes(from_dict(DemoConfig, config))
    if kind == "audit":
        if not all(k in reported for k in SET_SIZES):
            return None
        counts = [int(reported[k]) for k in SET_SIZES]
        return audit_sizes(from_dict(AuditConfig, config), *counts)
    return ()
