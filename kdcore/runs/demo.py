"""The built-in scenario as a run kind (`demo`): seed 000's MNIST protocol carried over to Fashion-MNIST
(kdcore.runs.scenario draws its data and trains its models; its config is `DemoConfig`).

Scenario "no_attack" (as in the sweep): the suspect is the clean-trained baseline and the training
set is clean, so every alarm is a false one. `blind`: the audit also gathers the verdict's
label-free evidence (kdcore.verdict) as if the trigger were unknown; the trigger then only evaluates
(asr, poison_acc), and the demo's own poison indices score every detector.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from kdcore.pipeline import run_kd_pipeline
from kdcore.progress import ProgressFn, no_progress
from kdcore.run_context import RunContext
from kdcore.runs.common import environment, start_run, write_report
from kdcore.runs.configs import DemoConfig
from kdcore.runs.scenario import SPEC, build_demo_data, train_model
from kdcore.stages import Stages
from kdcore.verdict.gather import add_to_report, blind_audit
from kdcore.views import write_views


def run_demo(cfg: DemoConfig, run_dir: str | Path, on_progress: ProgressFn = no_progress) -> dict:
    with start_run(run_dir, "demo", cfg, cfg.device) as (run_dir, device, resolved, t0):
        on_progress("prepare", 0, 1, {})
        data = build_demo_data(cfg)
        on_progress("prepare", 1, 1, {})
        baseline, b_st = train_model(cfg, data, "baseline", device, on_progress)
        attack = cfg.scenario == "attack"
        if attack:
            teacher, t_st = train_model(cfg, data, "teacher", device, on_progress)
            train, poison_idx, references = data.poisoned, data.poison_idx, {"baseline": baseline}
        else:  # the clean baseline is the suspect: no poisons, and no second copy of it to evaluate
            teacher, t_st = baseline, b_st
            train, poison_idx, references = data.train, torch.zeros(0, dtype=torch.long), {}
        out = run_kd_pipeline(
            teacher,
            SPEC,
            data.clean_pool,
            cfg.kd,
            Stages(run_dir / "stages"),
            device,
            train=train,
            test=data.test,
            trigger=cfg.trigger_value,
            poison_idx=poison_idx,
            references=references,
            seed=cfg.seed,
            on_progress=on_progress,
            run_dir=run_dir,
        )
        out.stages = {"baseline": b_st, "teacher": t_st, **out.stages}
        report = out.report()
        if cfg.blind:
            student, s_spec = out.models["student"]
            blind = blind_audit(
                teacher, student, SPEC, data.clean_pool, device,
                table=out.table, train=train, poison_idx=poison_idx, student_spec=s_spec, seed=cfg.seed,
                on_progress=on_progress, nc_params=cfg.neural_cleanse,
            )  # fmt: skip
            add_to_report(report, blind, run_dir, trigger_given=True)
        on_progress("view", 0, 1, {})  # a stage of its own in the job log and the ETA
        views_s = write_views(
            RunContext(run_dir, "demo", resolved, SPEC, teacher, train, data.test, cfg.trigger_value, poison_idx),
            teacher_file=t_st.dir / "model.safetensors",
        )
        report.update(
            kind="demo",
            config=resolved,
            **environment(device),
            data={
                "train": len(data.train),
                "scenario": cfg.scenario,
                "poisons": len(poison_idx),
                "clean_unlabeled": len(data.clean_pool),
                "test": len(data.test),
                "trigger": cfg.trigger_value.describe(SPEC.names),
                "dataset": "Fashion-MNIST (IDX)",
            },
            wall_s=round(time.perf_counter() - t0, 2),
            views_s=round(views_s, 2),
        )
        write_report(run_dir, report)
        return report
