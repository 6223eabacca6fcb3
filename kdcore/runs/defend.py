"""Run one registered defense (kdcore.defenses) on a suspect model, as a run kind.

The inputs come from one of three places (exactly one):
    source_run  a finished demo or audit run directory: its model, data and trigger, so the
                result sits next to the core method's in the dashboard's Defenses page;
    demo        the built-in Fashion-MNIST scenario (a DemoConfig), e.g. with another trigger;
    audit       explicit paths, as for an audit (model, unlabeled, train, test, trigger).

<run_dir>/report.json        the DefenseResult report (kdcore.report's shape) + where the inputs came from
<run_dir>/models/repaired.*  the repaired model (repairers)
<run_dir>/candidates.csv     per-sample scores, ranked (detectors; kdcore.candidates)
<run_dir>/evidence/*.png     evidence images (e.g. Neural Cleanse's recovered triggers)
<run_dir>/evidence/*.safetensors  raw evidence tensors (Neural Cleanse's float triggers: recovered.safetensors)
<run_dir>/stages/            cached stage outputs of methods that have stages (KD)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdcore.candidates import FILE_NAME, ranked_rows, write_candidates
from kdcore.config import from_dict, setting
from kdcore.defenses.base import DefenseInputs, DefenseResult, get_defense
from kdcore.defenses.evidence import write_evidence
from kdcore.errors import ConfigError, InputError
from kdcore.io import read_json
from kdcore.models.loading import save_model
from kdcore.progress import ProgressFn, no_progress
from kdcore.runs.common import environment, labelled_sets, start_run, write_report
from kdcore.runs.configs import AuditConfig, DemoConfig
from kdcore.runs.scenario import SPEC, build_demo_data, suspect
from kdcore.sandbox import load_model, load_unlabeled  # untrusted input: in a child process
from kdcore.triggers import Trigger


@dataclass(frozen=True)
class DefendConfig:
    method: str = setting("", "a registered defense: python -m kdcore defend --help lists them")
    params: dict = setting(factory=dict, help="the method's own settings (its config class)")
    source_run: str = setting("", "a finished demo or audit run directory")
    demo: DemoConfig | None = setting(None, "or: the built-in scenario")
    audit: AuditConfig | None = setting(None, "or: explicit inputs, as for an audit")
    clean_labeled: str = setting("", "folder or zip of labelled clean images (fine-pruning, NAD)")
    seed: int = setting(0, "random seed")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")

    def __post_init__(self) -> None:
        cls = get_defense(self.method)
        cls.from_params(self.params)  # unknown or bad settings fail here, before anything runs
        given = [n for n in ("source_run", "demo", "audit") if getattr(self, n)]
        if len(given) != 1:
            raise ConfigError(
                "A defense runs on exactly one of: source_run (a finished run), demo, or audit inputs; "
                f"got {given or 'none'}"
            )

    def check_inputs(self) -> None:
        if self.source_run:
            src = Path(self.source_run)
            if not (src / "config.json").exists():
                raise InputError(f"{src} is not a kdcore run directory (no config.json)")
            kind = read_json(src / "config.json").get("kind")
            if kind not in ("demo", "audit"):
                raise InputError(f"Defenses run on demo or audit runs; {src} is a {kind!r} run")
        if self.audit is not None:
            self.audit.check_inputs()
        if self.clean_labeled and not Path(self.clean_labeled).exists():
            raise InputError(f"--clean-labeled {self.clean_labeled} does not exist")


def demo_inputs(cfg: DemoConfig, device: torch.device, on_progress: ProgressFn = no_progress) -> DefenseInputs:
    """The built-in scenario as defense inputs: the (cached) backdoored teacher, the clean pool
    (unlabelled, and labelled for the labelled-data baselines), the poisoned training set with
    its ground truth, the test set and the trigger. With `scenario="no_attack"`, as in the demo,
    the suspect is the clean baseline and the training set is clean (no poison indices)."""
    data = build_demo_data(cfg)
    teacher, train, poison_idx = suspect(cfg, data, device, on_progress)
    return DefenseInputs(
        model=teacher.eval(),
        spec=SPEC,
        device=device,
        unlabeled=data.clean_pool,
        clean_labeled=data.clean_labeled,
        train=train,
        test=data.test,
        trigger=cfg.trigger_value,
        poison_idx=poison_idx,
        seed=cfg.seed,
    )


def audit_inputs(cfg: AuditConfig, device: torch.device) -> DefenseInputs:
    teacher, spec = load_model(cfg.model, cfg.model_spec(), device)
    unlabeled = load_unlabeled(cfg.unlabeled, spec.input_shape, name="unlabeled")
    if cfg.max_unlabeled and len(unlabeled) > cfg.max_unlabeled:
        unlabeled = unlabeled.subset(list(range(cfg.max_unlabeled)))
    train, test, _, spec = labelled_sets(spec, cfg.train, cfg.test)
    return DefenseInputs(
        model=teacher.eval(),
        spec=spec,
        device=device,
        unlabeled=unlabeled,
        train=train,
        test=test,
        trigger=Trigger.from_dict(cfg.trigger) if cfg.trigger else None,
        seed=cfg.seed,
    )


def resolve_inputs(cfg: DefendConfig, device: torch.device, on_progress: ProgressFn = no_progress) -> DefenseInputs:
    if cfg.source_run:
        body = read_json(Path(cfg.source_run) / "config.json")
        kind = body.pop("kind")
        if kind == "demo":
            inputs = demo_inputs(from_dict(DemoConfig, body), device, on_progress)
        else:
            inputs = audit_inputs(from_dict(AuditConfig, body), device)
    elif cfg.demo is not None:
        inputs = demo_inputs(cfg.demo, device, on_progress)
    else:
        inputs = audit_inputs(cfg.audit, device)
    if cfg.clean_labeled:
        # inputs.spec carries the training/test sets' class names when the model had none
        *_, inputs.clean_labeled, _ = labelled_sets(inputs.spec, clean_path=cfg.clean_labeled)
    inputs.seed = cfg.seed
    inputs.on_progress = on_progress
    return inputs


def write_outputs(run_dir: Path, result: DefenseResult, inputs: DefenseInputs) -> None:
    if result.model is not None:
        save_model(result.model, result.spec or inputs.spec, run_dir / "models" / "repaired.safetensors")
    if result.scores is not None and result.flagged is not None and inputs.train is not None:
        train = inputs.train
        rows = ranked_rows(
            result.scores,
            result.flagged,
            train.require_labels("A candidates table"),
            sources=train.sources,
            dataset=train.name,
            class_names=inputs.spec.names,
            poison_idx=inputs.poison_idx,
            per_sample=result.per_sample,
        )
        write_candidates(run_dir / FILE_NAME, rows)
    write_evidence(run_dir, result.images)


def run_defend(cfg: DefendConfig, run_dir: str | Path, on_progress: ProgressFn = no_progress) -> dict:
    with start_run(run_dir, "defend", cfg, cfg.device) as (run_dir, device, resolved, t0):
        on_progress("prepare", 0, 1, {"message": "loading model and data"})
        inputs = resolve_inputs(cfg, device, on_progress)
        inputs.work_dir = run_dir / "stages"
        on_progress("prepare", 1, 1, {})
        method = get_defense(cfg.method).from_params(cfg.params)
        result = method.run(inputs)
        write_outputs(run_dir, result, inputs)
        report = result.report()
        # evidence_images names PNGs; raw tensors (names with a dot) are in evidence/*.safetensors
        report["evidence_images"] = [n for n in report["evidence_images"] if "." not in n]
        report.update(
            kind="defend",
            config=resolved,
            **environment(device),
            source={
                "run": cfg.source_run or None,
                "scenario": "demo" if cfg.demo else ("audit" if cfg.audit else None),
            },
            needs_labels=method.needs_labels,
            data={
                name: (len(d) if d is not None else None)
                for name, d in (
                    ("unlabeled", inputs.unlabeled),
                    ("clean_labeled", inputs.clean_labeled),
                    ("train", inputs.train),
                    ("test", inputs.test),
                )
            }
            | {"trigger": inputs.trigger.describe(inputs.spec.names) if inputs.trigger else None},
            wall_s=round(time.perf_counter() - t0, 2),
        )
        write_report(run_dir, report)
        return report
