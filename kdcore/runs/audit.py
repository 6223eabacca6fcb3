"""Audit of a user's model on a user's images (folders or zip archives).

The model's architecture comes from the file where the format carries it (a kdcore spec, ONNX,
torch.export, a timm config.json), or from the flags: `--arch` (built-in, `timm:<name>`, `tv:<name>`,
an installed plugin) or `--arch-file FILE.py:Class` (runs that file: only with --trust-code, and the
config pins the file's SHA-256). Flags win over anything stored beside the model (`model_spec`).

Without a trigger (or with `--blind`) the audit gathers label-free evidence and writes a verdict
(kdcore.blind, kdcore.verdict); a trigger given with --blind is then used for evaluation only.
`--known-poisons FILE` scores every detector (precision / recall); no method sees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from kdcore.blind import add_to_report, blind_audit, check_nc_params
from kdcore.config import setting
from kdcore.detox import read_known_poisons
from kdcore.errors import ConfigError, InputError, ModelLoadError
from kdcore.io import file_sha256
from kdcore.models.plugins import require_trust, split_arch_file
from kdcore.models.registry import DEFAULT_INPUT
from kdcore.models.spec import LAYER_ROLES, ModelSpec
from kdcore.pipeline import KDConfig, run_kd_pipeline
from kdcore.progress import ProgressFn, no_progress
from kdcore.runs.common import environment, labelled_sets, start_run, write_report
from kdcore.runs.context import RunContext
from kdcore.sandbox import load_model, load_unlabeled, read_spec  # untrusted input: in a child process
from kdcore.stages import Stages
from kdcore.triggers import Trigger
from kdcore.views import write_views


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
    blind: bool = setting(False, "gather the verdict's evidence even when a trigger is given (it then only evaluates)")
    known_poisons: str = setting("", "file of training-sample indices or file names that are poisons: precision/recall")
    neural_cleanse: dict = setting(factory=dict, help="the verdict's Neural Cleanse settings (kdcore defend --help)")
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
        from kdcore.models.timmhf import default_input

        return default_input(arch) or (3, 224, 224)
    if arch.startswith("tv:"):
        return (3, 224, 224)  # torchvision's classifiers are built for ImageNet's size
    raise ConfigError(  # a plugin or a class in a file: nothing says what it takes, and a guess fails late
        f"{arch} does not say what input it takes; give the input shape as C,H,W (--input-shape 1,28,28 for "
        "grey 28×28 images, 3,32,32 for colour 32×32)"
    )


def run_audit(cfg: AuditConfig, run_dir: str | Path, on_progress: ProgressFn = no_progress) -> dict:
    with start_run(run_dir, "audit", cfg, cfg.device) as (run_dir, device, resolved, t0):
        on_progress("prepare", 0, 4, {"message": "loading model"})
        teacher, spec = load_model(cfg.model, cfg.model_spec(), device)
        trigger = Trigger.from_dict(cfg.trigger) if cfg.trigger else None
        if trigger is not None:
            trigger.check_input(spec.input_shape)  # a patch that does not fit fails now, not after training
        on_progress("prepare", 1, 4, {"message": "loading images"})
        unlabeled = load_unlabeled(cfg.unlabeled, spec.input_shape, name="unlabeled")
        if cfg.max_unlabeled and len(unlabeled) > cfg.max_unlabeled:
            unlabeled = unlabeled.subset(list(range(cfg.max_unlabeled)))
        on_progress("prepare", 2, 4, {"message": "loading labelled images"})
        train, test, _, spec = labelled_sets(spec, cfg.train, cfg.test)
        poison_idx = read_known_poisons(cfg.known_poisons, train) if cfg.known_poisons and train is not None else None
        sizes = {"unlabeled": len(unlabeled), "train": len(train or ()), "test": len(test or ())}
        on_progress("prepare", 4, 4, {**sizes, "classes": spec.num_classes})  # the first job's ETA goes by them
        out = run_kd_pipeline(
            teacher,
            spec,
            unlabeled,
            cfg.kd,
            Stages(run_dir / "stages"),
            device,
            train=train,
            test=test,
            trigger=trigger,
            poison_idx=poison_idx,
            seed=cfg.seed,
            on_progress=on_progress,
            run_dir=run_dir,
        )
        report = out.report()
        if cfg.blind or trigger is None:
            student, s_spec = out.models["student"]
            blind = blind_audit(
                teacher, student, spec, unlabeled, device,
                table=out.table, train=train, poison_idx=poison_idx, student_spec=s_spec, seed=cfg.seed,
                on_progress=on_progress, nc_params=cfg.neural_cleanse,
            )  # fmt: skip
            add_to_report(report, blind, run_dir, trigger_given=trigger is not None)
        on_progress("view", 0, 1, {})  # a stage of its own in the job log and the ETA
        views_s = write_views(RunContext(run_dir, "audit", resolved, spec, teacher, train, test, trigger, poison_idx))
        report.update(
            kind="audit",
            config=resolved,
            **environment(device),
            model={"spec": spec.to_dict(), "parameters": sum(p.numel() for p in teacher.parameters())},
            data={
                name: None
                if d is None
                else {"images": len(d), "skipped": len(d.skipped), "skipped_files": list(d.skipped[:50])}
                for name, d in (("unlabeled", unlabeled), ("train", train), ("test", test))
            },
            wall_s=round(time.perf_counter() - t0, 2),
            views_s=round(views_s, 2),
        )
        report["data"]["trigger"] = trigger.describe() if trigger else None
        report["notes"] += trigger.notes() if trigger else []
        write_report(run_dir, report)
        return report
