"""Triggers and poisoning. Importing this package registers every trigger kind."""

from kdcore.triggers.badnets import BadNets
from kdcore.triggers.base import TRIGGERS, Trigger, parse_trigger
from kdcore.triggers.blend import Blend
from kdcore.triggers.blended import Blended
from kdcore.triggers.patch import Patch
from kdcore.triggers.poison import poison_dataset, poison_test_set
from kdcore.triggers.recovered import Recovered
from kdcore.triggers.sig import SIG
from kdcore.triggers.triggered_set import TriggeredSet
from kdcore.triggers.wanet import WaNet

__all__ = [
    "SIG",
    "TRIGGERS",
    "BadNets",
    "Blend",
    "Blended",
    "Patch",
    "Recovered",
    "Trigger",
    "TriggeredSet",
    "WaNet",
    "parse_trigger",
    "poison_dataset",
    "poison_test_set",
]
