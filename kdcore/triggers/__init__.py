"""Triggers and poisoning. Importing this package registers every trigger kind."""

from kdcore.triggers.badnets import BadNets
from kdcore.triggers.base import TRIGGERS, Trigger, parse_trigger
from kdcore.triggers.blended import Blended
from kdcore.triggers.poison import poison_dataset, poison_test_set

__all__ = ["TRIGGERS", "BadNets", "Blended", "Trigger", "parse_trigger", "poison_dataset", "poison_test_set"]
