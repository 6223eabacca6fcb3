"""Triggers and poisoning. Importing this package registers every trigger kind."""

from kdcore.triggers.badnets import BadNets
from kdcore.triggers.base import TRIGGERS, Trigger, parse_trigger
from kdcore.triggers.blended import Blended
from kdcore.triggers.poison import poison_dataset, poison_test_set
from kdcore.triggers.sig import SIG
from kdcore.triggers.wanet import WaNet

__all__ = [
    "SIG",
    "TRIGGERS",
    "BadNets",
    "Blended",
    "Trigger",
    "WaNet",
    "parse_trigger",
    "poison_dataset",
    "poison_test_set",
]
