"""Defenses: one small interface per family, one registry, one result shape.

    Repairer          suspect model + data → a repaired model    (BCU, ℓ∞ pruning, fine-pruning, NAD)
    Detector          suspect model + labelled training set → ranked samples (activation clustering)
    Inspector         suspect model + clean images → evidence about the model (Neural Cleanse)
    RepairerDetector  both: a repaired model and ranked samples   (KD, the core method)

A method subclasses its family's base, sets `name`, `config_class` and `needs`, and fills in
the one step that differs (`repair`, `score`, `inspect` or `repair_and_detect`). The base owns
the rest: checking that the inputs the method needs are there, timing, and evaluating every
model it returns on the same test set and trigger, so every method's result has the same keys
(the report shape of `kdcore.report`):

    clean_acc, poison_acc, asr           of the suspect and the repaired model (EvalResult)
    flagged, precision, recall, ...      of a method's flagged samples (DetoxResult)
    headline                             one line of what the method found

Methods never look at `test`, `trigger` or `poison_idx`: those are for evaluation only. The
one exception is drawn in the open: ℓ∞ pruning's threshold sweep is itself a measurement and
evaluates each threshold with `inputs.evaluate`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from kdcore.config import from_dict, to_dict
from kdcore.data.imageset import ImageSet
from kdcore.detox import DetoxResult, detox_metrics
from kdcore.errors import ConfigError, InputError
from kdcore.evaluate import EvalResult, evaluate_model
from kdcore.models.spec import ModelSpec
from kdcore.progress import ProgressFn, no_progress
from kdcore.report import ROLES
from kdcore.triggers.base import Trigger

DEFENSES: dict[str, type[Defense]] = {}

# What a method may ask for, and how to tell the user when it is missing.
INPUT_HELP = {
    "unlabeled": "unlabelled clean images (--unlabeled)",
    "clean_labeled": "labelled clean images (--clean-labeled; fine-pruning and NAD need labels)",
    "train": "the labelled, possibly poisoned training set (--train)",
}


@dataclass
class DefenseInputs:
    """Everything a defense may use, and what it is evaluated on. Images are uint8 ImageSets."""

    model: nn.Module  # the suspect model; methods must not modify it (copy first)
    spec: ModelSpec
    device: torch.device
    unlabeled: ImageSet | None = None  # clean, unlabelled images (the defender's pool)
    clean_labeled: ImageSet | None = None  # clean, labelled images (labelled-data baselines only)
    train: ImageSet | None = None  # labelled, possibly poisoned training set (detectors)
    test: ImageSet | None = None  # evaluation only
    trigger: Trigger | None = None  # evaluation only: the known trigger, for poison_acc / asr
    poison_idx: torch.Tensor | None = None  # evaluation only: ground-truth poisons in `train`
    seed: int = 0
    on_progress: ProgressFn = no_progress
    work_dir: Path | None = None  # where a method may cache stage outputs (kdcore.stages); None = a temp folder

    def evaluate(self, model: nn.Module, spec: ModelSpec | None = None) -> EvalResult | None:
        """clean_acc / poison_acc / asr on the test set (None without a labelled test set)."""
        if self.test is None:
            return None
        return evaluate_model(model, spec or self.spec, self.test, self.device, self.trigger)

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + offset)


@dataclass(frozen=True, eq=False)
class DefenseResult:
    """What a defense produced. `report()` is the JSON written to report.json (kdcore.report's shape)."""

    method: str
    family: str
    config: dict
    suspect: EvalResult | None = None
    repaired: EvalResult | None = None  # repairers
    detection: DetoxResult | None = None  # detectors: flagged, precision, recall
    headline: str = ""  # one line of what the method found
    evidence: dict = field(default_factory=dict)  # method-specific, JSON-ready
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, where a method has stages
    others: dict[str, EvalResult] = field(default_factory=dict)  # further models by role (KD: "student")
    model: nn.Module | None = None  # the repaired model (repairers)
    spec: ModelSpec | None = None  # the repaired model's spec, where it differs from the suspect's
    scores: torch.Tensor | None = None  # (N,) float, higher = more suspicious (detectors)
    flagged: torch.Tensor | None = None  # (N,) bool (detectors)
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)  # more (N,) columns for candidates.csv
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # name → uint8 (C, H, W) evidence images

    def report(self) -> dict:
        return {
            "method": self.method,
            "family": self.family,
            "method_config": self.config,
            "suspect": self.suspect.to_dict() if self.suspect else None,
            **{role: ev.to_dict() for role, ev in self.others.items()},
            "repaired": self.repaired.to_dict() if self.repaired else None,
            "detection": self.detection.to_dict() if self.detection else None,
            "headline": self.headline,
            "evidence": self.evidence,
            "evidence_images": sorted(self.images),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "method_wall_s": round(self.wall_s, 2),
        }


class Defense:
    """Base of every family. Subclasses set the class attributes below."""

    name: ClassVar[str] = ""  # registry name, e.g. "bcu"
    family: ClassVar[str] = ""  # repairer | detector | inspector
    config_class: ClassVar[type] = object  # a frozen dataclass of the method's settings
    needs: ClassVar[tuple[str, ...]] = ()  # keys of INPUT_HELP the method cannot run without
    needs_labels: ClassVar[bool] = False  # True: a labelled-clean-data baseline (shown as such)
    summary: ClassVar[str] = ""  # one line for `defend --help` and the dashboard
    paper: ClassVar[str] = ""  # where the method comes from

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        if cls.name:
            DEFENSES[cls.name] = cls

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise ConfigError(f"{self.name} takes a {self.config_class.__name__}; got {type(self.config).__name__}")

    @classmethod
    def from_params(cls, params: dict | None) -> Defense:
        """Build from a plain dict of settings (unknown keys are an error)."""
        return cls(from_dict(cls.config_class, params or {}, cls.name))

    def check(self, inputs: DefenseInputs) -> None:
        missing = [INPUT_HELP[n] for n in self.needs if getattr(inputs, n) is None or len(getattr(inputs, n)) == 0]
        if missing:
            raise InputError(f"{self.name} needs " + " and ".join(missing) + "; none was given")
        for n in self.needs:
            data = getattr(inputs, n)
            if tuple(data.images.shape[1:]) != tuple(inputs.spec.input_shape):
                raise InputError(
                    f"{self.name}: {n} images are {tuple(data.images.shape[1:])} but the model takes "
                    f"{tuple(inputs.spec.input_shape)}"
                )

    def run(self, inputs: DefenseInputs) -> DefenseResult:
        raise NotImplementedError

    def _result(self, inputs: DefenseInputs, wall_s: float, evidence: dict, **kw) -> DefenseResult:
        """The result with the suspect model evaluated; `wall_s` is the method's own time. A method
        puts its one-line finding in `evidence["headline"]`; it becomes the result's `headline`."""
        evidence = dict(evidence)
        headline = str(evidence.pop("headline", ""))
        return DefenseResult(
            method=self.name,
            family=self.family,
            config=to_dict(self.config),
            suspect=inputs.evaluate(inputs.model),
            headline=headline,
            evidence=evidence,
            wall_s=wall_s,
            **kw,
        )

    def _detection(self, inputs: DefenseInputs, scores: torch.Tensor, flagged: torch.Tensor) -> DetoxResult:
        """flagged / precision / recall of per-sample verdicts on `inputs.train` (shapes checked)."""
        n = len(inputs.train)
        if scores.shape != (n,) or flagged.shape != (n,) or flagged.dtype != torch.bool:
            raise RuntimeError(f"{self.name} returned shapes {scores.shape}, {flagged.shape}; expected ({n},)")
        return detox_metrics(flagged, inputs.poison_idx)


class Repairer(Defense):
    """Suspect model + data → repaired model. Subclasses implement `repair`."""

    family = "repairer"

    def repair(self, inputs: DefenseInputs) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
        """Return (repaired model, evidence dict, evidence images). Must not modify `inputs.model`."""
        raise NotImplementedError

    def run(self, inputs: DefenseInputs) -> DefenseResult:
        self.check(inputs)
        t0 = time.perf_counter()
        model, evidence, images = self.repair(inputs)
        wall = time.perf_counter() - t0
        model.eval()
        return self._result(
            inputs, wall, repaired=inputs.evaluate(model), evidence=evidence, model=model, images=images
        )


class Detector(Defense):
    """Labelled training set → per-sample suspicion scores and a flagged set. Implement `score`."""

    family = "detector"
    needs = ("train",)

    def score(self, inputs: DefenseInputs) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Return (scores (N,) float — higher is more suspicious, flagged (N,) bool, evidence)."""
        raise NotImplementedError

    def run(self, inputs: DefenseInputs) -> DefenseResult:
        self.check(inputs)
        t0 = time.perf_counter()
        scores, flagged, evidence = self.score(inputs)
        wall = time.perf_counter() - t0
        detection = self._detection(inputs, scores, flagged)
        return self._result(inputs, wall, detection=detection, evidence=evidence, scores=scores, flagged=flagged)


class Inspector(Defense):
    """Suspect model + clean images → evidence about the model. Implement `inspect`."""

    family = "inspector"

    def inspect(self, inputs: DefenseInputs) -> tuple[dict, dict[str, torch.Tensor]]:
        """Return (evidence dict, evidence images)."""
        raise NotImplementedError

    def run(self, inputs: DefenseInputs) -> DefenseResult:
        self.check(inputs)
        t0 = time.perf_counter()
        evidence, images = self.inspect(inputs)
        wall = time.perf_counter() - t0
        return self._result(inputs, wall, evidence=evidence, images=images)


@dataclass
class RepairAndDetection:
    """What a repairer-detector's step returns."""

    model: nn.Module  # the repaired model
    evidence: dict  # method-specific, JSON-ready; "headline": one line of what it found
    spec: ModelSpec | None = None  # the repaired model's spec (None = the suspect's)
    scores: torch.Tensor | None = None  # (N,) over inputs.train, higher = more suspicious; None without one
    flagged: torch.Tensor | None = None  # (N,) bool
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)  # more (N,) columns for candidates.csv
    others: dict[str, tuple[nn.Module, ModelSpec]] = field(default_factory=dict)  # more models to evaluate, by role
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class RepairerDetector(Repairer):
    """Suspect model + data → a repaired model AND ranked, flagged training samples (when a training
    set is given). Implement `repair_and_detect`; it is a Repairer wherever a repaired model is expected."""

    family = "repairer+detector"

    def repair_and_detect(self, inputs: DefenseInputs) -> RepairAndDetection:
        raise NotImplementedError

    def repair(self, inputs: DefenseInputs) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
        out = self.repair_and_detect(inputs)
        return out.model, out.evidence, {}

    def run(self, inputs: DefenseInputs) -> DefenseResult:
        self.check(inputs)
        t0 = time.perf_counter()
        out = self.repair_and_detect(inputs)
        wall = time.perf_counter() - t0
        out.model.eval()
        if set(out.others) - set(ROLES):
            raise RuntimeError(f"{self.name} returned models of unknown roles {sorted(set(out.others) - set(ROLES))}")
        detection = None
        if out.flagged is not None and out.scores is not None:
            detection = self._detection(inputs, out.scores, out.flagged)
        others = {role: inputs.evaluate(m, s) for role, (m, s) in out.others.items()}
        return self._result(
            inputs,
            wall,
            out.evidence,
            repaired=inputs.evaluate(out.model, out.spec),
            detection=detection,
            timings=out.timings,
            others={k: v for k, v in others.items() if v is not None},
            model=out.model,
            spec=out.spec,
            scores=out.scores,
            flagged=out.flagged,
            per_sample=out.per_sample,
        )


def get_defense(name: str) -> type[Defense]:
    import kdcore.defenses  # noqa: F401  (registers every method)

    if name not in DEFENSES:
        raise ConfigError(f"Unknown defense {name!r}; expected one of {', '.join(sorted(DEFENSES))}")
    return DEFENSES[name]
