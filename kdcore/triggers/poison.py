"""Poisoning a labelled set (the attacker's side, for demos and benchmarks) and poison test sets."""

from __future__ import annotations

import torch

from kdcore.data.imageset import ImageSet
from kdcore.errors import ConfigError
from kdcore.triggers.base import Trigger


def poison_dataset(
    data: ImageSet, trigger: Trigger, n_poison: int, generator: torch.Generator, clean_label: bool = False
) -> tuple[ImageSet, torch.Tensor]:
    """Stamp `n_poison` random victim-class samples and relabel them as the target (label flipping),
    or with `clean_label` stamp `n_poison` target-class samples and keep their labels (SIG's setting).

    Returns the poisoned set (same order and size) and the sorted poison indices (ground truth).
    """
    labels = data.require_labels("Poisoning")
    trigger.check_classes(data.num_classes)
    mask, what = (
        (labels == trigger.target, "of the target class")
        if clean_label
        else (trigger.victims(labels), "of victim classes")
    )
    pool = torch.nonzero(mask).flatten()
    if n_poison < 0 or n_poison > len(pool):
        raise ConfigError(f"Cannot poison {n_poison} samples: only {len(pool)} samples are {what}")
    idx = pool[torch.randperm(len(pool), generator=generator)[:n_poison]].sort().values
    images, new_labels = data.images.clone(), labels.clone()
    images[idx] = trigger.stamp(data.images[idx])
    if not clean_label:
        new_labels[idx] = trigger.target
    return ImageSet(images, new_labels, data.class_names, data.sources, data.name + "-poisoned"), idx


def poison_test_set(test: ImageSet, trigger: Trigger) -> tuple[ImageSet, torch.Tensor]:
    """Seed 000's D^p_test: the trigger stamped on every test image whose true class is not the
    target, labels kept. Also returns the mask (over the kept images) of those the attack targets
    (all of them for all-to-one; only the source class for source-specific triggers). A triggered
    test set (`TriggeredSet`) answers with its own images (`Trigger.poison_test`)."""
    return trigger.poison_test(test)
