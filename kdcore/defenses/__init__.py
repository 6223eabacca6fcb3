"""Backdoor defenses beside the core method, one interface per family (see `base`).

Importing this package registers every method in `DEFENSES` (name → class).
"""

from kdcore.defenses.activation_clustering import ActivationClustering
from kdcore.defenses.base import (
    DEFENSES,
    Defense,
    DefenseInputs,
    DefenseResult,
    Detector,
    Inspector,
    RepairAndDetection,
    Repairer,
    RepairerDetector,
    get_defense,
)
from kdcore.defenses.bcu import BCU
from kdcore.defenses.fine_pruning import FinePruning
from kdcore.defenses.kd import KD
from kdcore.defenses.linf_pruning import LinfPruning
from kdcore.defenses.nad import NAD
from kdcore.defenses.neural_cleanse import NeuralCleanse

__all__ = [
    "BCU",
    "DEFENSES",
    "KD",
    "NAD",
    "ActivationClustering",
    "Defense",
    "DefenseInputs",
    "DefenseResult",
    "Detector",
    "FinePruning",
    "Inspector",
    "LinfPruning",
    "NeuralCleanse",
    "RepairAndDetection",
    "Repairer",
    "RepairerDetector",
    "get_defense",
]
