"""The configs that several run kinds share: an audit's inputs (`AuditConfig`: run by `audit`, read
back by `defend` and by rebuilding a run) and the built-in scenario's (`DemoConfig`: run by `demo`,
used by `sweep` and `defend`). Each validates itself in `__post_init__`; unknown keys are an error
(kdcore.config.from_dict).

The model's architecture comes from the file where the format carries it (a kdcore spec, ONNX,
torch.export, a timm config.json), or from the flags: `--arch` (built-in, `timm:<name>`, `tv:<name>`,
an installed plugin) or `--arch-file FILE.py:Class` (runs that file: only with --trust-code, and the
config pins the file's SHA-256). Flags win over anything stored beside the model (`model_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kdcore.config import from_dict, setting
from kdcore.errors import ConfigError, InputError, ModelLoadError
from kdcore.io import file_sha256
from kdcore.models.plugins import require_trust, split_arch_file
from kdcore.models.registry import DEFAULT_INPUT
from kdcore.models.spec import LAYER_ROLES, ModelSpec
from kdcore.models.timmhf import default_input
from kdcore.pipeline import KDConfig
from kdcore.sandbox import read_spec  # untrusted input: in a child process
from kdcore.train import TrainConfig
from kdcore.triggers import BadNets, Trigger
from kdcore.verdict.detectors import check_nc_params


@dataclass(frozen=True)
class AuditConfig:
    model: str = setting("", ".safetensors (preferred), .pt/.pth state_dict, .onnx, .pt2, or a timm model folder/zip")
    arch: str = setting("", 'registry, timm:<name> or plugin name; "" = read from the model\'s spec')
    num_classes: int = setting(0, "0 = read from the model's spec")
    arch_file: str = setting("", "FILE.py:ClassName, an architecture class in a Python file (needs --trust-code)")
    arch_file_sha256: str = setting("", "SHA-256 of the --arch-file, filled in when the config is made")
    arch_kwargs: dict = setting(factory=dict, help="options for the architecture's constructor, a JSON object")
    layers: tuple[str, ...] = setting((), "layer choice, ROLE=NAME: last_conv=features.3,penultimate=fc1")
    input_shape: tuple[int, ...] = setting((), "(C, H, W); () = the spec's or the architecture's default")
    mean: tuple[float, ...] = setting((), "per-channel mean of the normalisation, e.g. 0.5 or 0.49,0.48,0.45")
    std: tuple[float, ...] = setting((), "per-channel std of the normalisation")
    class_names: tuple[str, ...] = setting((), "class names in output order")
    unlabeled: str = setting("", "folder or zip of clean images, any layout")
    train: str = setting("", "folder or zip, one sub-folder per class: enables detox + fine-tuning")
    test: str = setting("", "folder or zip, one sub-folder per class: enables clean_acc / poison_acc / asr")
    trigger: dict | None = setting(None, "a known trigger (Trigger.to_dict()): enables poison_acc and asr")
    verdict: bool = setting(
        True, "judge the model (Neural Cleanse, clustering, the recovered trigger: the longest stage); off: quicker"
    )
    blind: bool = setting(False, "judge as if the trigger were unknown: a given trigger then only evaluates (asr)")
    known_poisons: str = setting("", "file of training-sample indices or file names that are poisons: precision/recall")
    neural_cleanse: dict = setting(
        factory=dict, help="the verdict's Neural Cleanse settings over its budget (VERDICT_NC; kdcore defend --help)"
    )
    max_unlabeled: int = setting(0, "use at most this many unlabelled images; 0 = all", min=0)
    seed: int = setting(0, "random seed")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    kd: KDConfig = setting(factory=KDConfig)

    def __post_init__(self) -> None:
        check_nc_params(self.neural_cleanse)
        if not self.model:
            raise ConfigError("An audit needs --model (a .safetensors or .pt state_dict)")
        if not self.unlabeled:
            raise ConfigError("An audit needs --unlabeled (a folder or zip of clean images)")
        if self.arch and self.arch_file:
            raise ConfigError("Give --arch or --arch-file, not both")
        if self.arch_file:
            self._pin_arch_file()
            if not self.num_classes:
                raise ConfigError(
                    "--arch-file needs --num-classes: a class in a Python file does not say how many classes "
                    "its model outputs"
                )
        elif bool(self.arch) != bool(self.num_classes):
            raise ConfigError(
                f"Give --arch and --num-classes together: --arch {self.arch} needs --num-classes (a state_dict "
                "does not say how many classes the model outputs)"
                if self.arch
                else "Give --num-classes together with --arch or --arch-file (or neither, for a model that carries "
                "its spec)"
            )
        if not isinstance(self.arch_kwargs, dict):
            raise ConfigError(f"--arch-kwargs must be a JSON object; got {self.arch_kwargs!r}")
        if self.arch_kwargs and not (self.arch or self.arch_file):
            raise ConfigError("--arch-kwargs go with --arch or --arch-file (the architecture they configure)")
        self.layer_choice()  # ROLE=NAME pairs, checked now
        if self.trigger is not None:
            Trigger.from_dict(self.trigger)
            if self.trigger.get("kind") == "triggered" and not self.test:
                raise ConfigError("A triggered test set is measured next to the clean test set: give --test too")
        if self.known_poisons and not self.train:
            raise ConfigError("--known-poisons names training samples: give --train too")
        if self.max_unlabeled < 0:
            raise ConfigError(f"max_unlabeled must be ≥ 0; got {self.max_unlabeled}")

    def _pin_arch_file(self) -> None:
        """The --arch-file made absolute and its SHA-256 recorded (once, where the config is made),
        so a queued job builds exactly the file that was checked."""
        path, name = split_arch_file(self.arch_file)
        file = Path(path).resolve()
        object.__setattr__(self, "arch_file", f"{file}:{name}")
        if not self.arch_file_sha256 and file.is_file():
            object.__setattr__(self, "arch_file_sha256", file_sha256(file))

    def layer_choice(self) -> dict[str, str]:
        """--layers as {role: module name}; ConfigError for a malformed pair or an unknown role."""
        choice = {}
        for item in self.layers:
            role, eq, name = (part.strip() for part in item.partition("="))
            if not eq or not name or role not in LAYER_ROLES:
                raise ConfigError(
                    f"--layers takes ROLE=NAME pairs with ROLE one of {', '.join(LAYER_ROLES)} "
                    f"(e.g. last_conv=features.3); got {item!r}"
                )
            choice[role] = name
        return choice

    def check_inputs(self) -> None:
        """Paths exist and an --arch-file may run (checked when a job is submitted, before anything is queued)."""
        for name in ("model", "unlabeled", "train", "test", "known_poisons"):
            p = getattr(self, name)
            if p and not Path(p).exists():
                raise InputError(f"--{name} {p} does not exist")
        if self.arch_file:
            path, name = split_arch_file(self.arch_file)
            require_trust(f"file:{name}")
            if not Path(path).is_file():
                raise InputError(f"--arch-file {path} does not exist")
            if self.arch_file_sha256 and file_sha256(path) != self.arch_file_sha256:
                raise InputError(
                    f"--arch-file {path} changed since this config was made (its SHA-256 differs); "
                    "submit the audit again to use the file as it is now"
                )

    def model_spec(self) -> ModelSpec:
        """The spec to build the model from. Flags win: with --arch/--arch-file the file's own spec is
        only a hint (its input shape, when it is the same architecture), so an unrelated or broken
        `<stem>.json` beside the model cannot stop the audit; without them the file's spec is required."""
        arch = self.arch or (f"file:{split_arch_file(self.arch_file)[1]}" if self.arch_file else "")
        if not arch:
            stored = self._stored_spec()
            if stored is None:
                raise ConfigError(f"{Path(self.model).name} carries no spec; give --arch and --num-classes")
            spec = stored
        else:
            try:  # only its input shape can be used, and only when no --input-shape is given
                stored = None if self.input_shape else self._stored_spec()
            except ModelLoadError:
                stored = None  # not ours to read: the flags say what the model is
            shape = self.input_shape or (stored.input_shape if stored and stored.arch == arch else _default_input(arch))
            spec = ModelSpec(arch, self.num_classes, tuple(shape), extra=dict(self.arch_kwargs))
            if self.arch_file:
                path = Path(split_arch_file(self.arch_file)[0])
                spec = spec.replace(source=str(path), source_sha256=self.arch_file_sha256 or file_sha256(path))
        changes = {
            k: v
            for k, v in (
                ("input_shape", self.input_shape),
                ("mean", self.mean),
                ("std", self.std),
                ("class_names", self.class_names),
                ("layers", {**spec.layers, **self.layer_choice()}),
            )
            if v
        }
        return spec.replace(**changes) if changes else spec

    def _stored_spec(self) -> ModelSpec | None:
        if not Path(self.model).exists():
            return None
        if self.input_shape:  # a graph with a dynamic input size needs the user's
            return read_spec(self.model, input_shape=tuple(self.input_shape))
        return read_spec(self.model)


def _default_input(arch: str) -> tuple[int, ...]:
    """The input shape an architecture is built for when neither the flags nor the file say."""
    if arch in DEFAULT_INPUT:
        return DEFAULT_INPUT[arch]
    if arch.startswith("timm:"):
        return default_input(arch) or (3, 224, 224)
    if arch.startswith("tv:"):
        return (3, 224, 224)  # torchvision's classifiers are built for ImageNet's size
    raise ConfigError(  # a plugin or a class in a file: nothing says what it takes, and a guess fails late
        f"{arch} does not say what input it takes; give the input shape as C,H,W (--input-shape 1,28,28 for "
        "grey 28×28 images, 3,32,32 for colour 32×32)"
    )


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
    neural_cleanse: dict = setting(
        factory=dict, help="the verdict's Neural Cleanse settings over its budget (VERDICT_NC; kdcore defend --help)"
    )
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
