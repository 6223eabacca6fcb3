"""Fine-tune again with a reviewer's verdicts (the human-in-the-loop step after seed 000's detox).

1. Rebuild the source run's training set, models and trigger (kdcore.runs.rebuild).
2. Removal set = flagged candidates, minus samples the reviewer cleared (`clean`),
   plus samples the reviewer marked `poison` that were not flagged. `unsure` changes nothing.
3. Fine-tune the source run's distilled student on what is left; evaluate; report what the
   verdicts changed (and, where poison ground truth exists, precision / recall of the removal).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdcore.candidates import FILE_NAME, flags_of, read_candidates
from kdcore.config import setting
from kdcore.detox import detox_metrics
from kdcore.errors import ConfigError, InputError
from kdcore.evaluate import evaluate_model
from kdcore.models.loading import load_model, save_model
from kdcore.pipeline import KDConfig, timed_stage, write_confusions, write_models
from kdcore.progress import ProgressFn, for_stage, no_progress
from kdcore.runs.common import environment, start_run, write_report
from kdcore.runs.rebuild import load_context
from kdcore.stages import Stages, fingerprint
from kdcore.train import TrainConfig, fit

VERDICT_VALUES = ("poison", "clean", "unsure")


@dataclass(frozen=True)
class RefineConfig:
    source_run: str = setting("", "run directory of a finished demo or audit")
    verdicts: tuple[tuple[int, str], ...] = setting((), "(training-sample index, poison | clean | unsure)")
    finetune: TrainConfig = setting(factory=lambda: KDConfig().finetune)  # the audit's own fine-tuning
    seed: int = setting(0, "random seed")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")

    def __post_init__(self) -> None:
        if not self.source_run:
            raise ConfigError("refine needs source_run: the run directory of a finished audit")
        pairs = tuple((int(i), str(v)) for i, v in self.verdicts)
        bad = sorted({v for _, v in pairs} - set(VERDICT_VALUES))
        if bad:
            raise ConfigError(f"Unknown verdict(s) {bad}; expected {VERDICT_VALUES}")
        object.__setattr__(self, "verdicts", pairs)

    def check_inputs(self) -> None:
        src = Path(self.source_run)
        for need in ("config.json", FILE_NAME, "models/student.safetensors"):
            if not (src / need).exists():
                raise InputError(
                    f"{src} cannot be refined: {need} is missing (has the audit finished with a training set?)"
                )


def read_flags(run_dir: Path) -> dict[int, bool]:
    """Training-sample index → flagged by the source run's detox (its candidates.csv)."""
    return flags_of(read_candidates(run_dir / FILE_NAME))


def run_refine(cfg: RefineConfig, run_dir: str | Path, on_progress: ProgressFn = no_progress) -> dict:
    with start_run(run_dir, "refine", cfg, cfg.device) as (run_dir, device, resolved, t0):
        on_progress("prepare", 0, 1, {"message": "rebuilding the source run"})
        src = Path(cfg.source_run)
        ctx = load_context(src, device)
        if ctx.train is None:
            raise InputError(f"The source run {src} had no labelled training set to fine-tune on")
        flags = read_flags(src)
        n = len(ctx.train)
        if len(flags) != n:
            raise InputError(f"candidates.csv lists {len(flags)} samples but the training set has {n}")
        verdicts = dict(cfg.verdicts)
        out_of_range = [i for i in verdicts if not 0 <= i < n]
        if out_of_range:
            raise InputError(f"Verdicts for samples {out_of_range[:5]} are outside the training set (0..{n - 1})")
        removed = torch.tensor(
            [(flags[i] and verdicts.get(i) != "clean") or verdicts.get(i) == "poison" for i in range(n)]
        )
        kept = ctx.train.subset(torch.nonzero(~removed).flatten(), name="train-reviewed")
        on_progress("prepare", 1, 1, {})
        student, s_spec = load_model(src / "models" / "student.safetensors", None, device)
        key = fingerprint("refine", fingerprint(student), kept, cfg.finetune, cfg.seed)

        def run_ft(folder: Path) -> dict:
            model, hist = fit(student, s_spec, kept, cfg.finetune, device, cfg.seed, for_stage(on_progress, "finetune"))
            save_model(model, s_spec, folder / "finetuned.safetensors")
            return {"history": hist}

        st = timed_stage(Stages(run_dir / "stages"), "finetune", key, run_ft)
        finetuned, _ = load_model(st.dir / "finetuned.safetensors", s_spec, device)
        evals = {}
        if ctx.test is not None:
            on_progress("evaluate", 0, 1, {})
            evals["finetuned"] = evaluate_model(finetuned, s_spec, ctx.test, device, ctx.trigger)
            on_progress("evaluate", 1, 1, {})
        write_models(run_dir, {"finetuned": (finetuned, s_spec)})
        write_confusions(run_dir, evals, ctx.spec.names)
        counts = {v: sum(1 for x in verdicts.values() if x == v) for v in VERDICT_VALUES}
        review = {
            "verdicts": counts,
            "cleared": sum(1 for i, v in verdicts.items() if v == "clean" and flags[i]),
            "added": sum(1 for i, v in verdicts.items() if v == "poison" and not flags[i]),
            "removed": int(removed.sum()),
            "flagged_by_detox": sum(flags.values()),
        }
        report = {
            **{k: v.to_dict() for k, v in evals.items()},
            "detox": detox_metrics(removed, ctx.poison_idx).to_dict(),
            "review": review,
            "finetune": st.meta.get("history"),
            "timings": {"finetune": round(st.meta.get("seconds", st.seconds), 3)},
            "stages": {"finetune": {"reused": st.reused, "seconds": round(st.seconds, 3), "dir": str(st.dir)}},
            "source_run": str(src),
            "kind": "refine",
            "config": resolved,
            **environment(device),
            "notes": [],
            "wall_s": round(time.perf_counter() - t0, 2),
        }
        write_report(run_dir, report)
        return report
