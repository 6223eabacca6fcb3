"""The clean-image budget sweep of seed 000 (figures 11, 14, 16–21; Tables 5–6).

For each seed, scenario and budget: distil the teacher on `budget` clean images, detoxify the
training set, fine-tune, and evaluate. "attack": the teacher is the backdoored model and the
training set is poisoned; "no_attack": the teacher is the baseline and the training set clean
(every flagged sample is then a false positive). Baseline and teacher train once per seed.

Submitted as a job, a sweep of more than one cell fans out (`sweep_parts`, `JobStore.submit`): one
part job per (seed, scenario, budget), which any executor runs in parallel (Ray on several nodes,
or several local workers), and a gathering job (`gather=True`) that waits for them and merges
their rows. Parts of one seed share its baseline and teacher through the stage cache (they take
turns, `kdcore.stages`). Every report with several seeds carries `summary`: mean and standard
deviation over seeds per (scenario, budget, model) and metric; its table shows mean ± std.
"""

from __future__ import annotations

import csv
import io
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from kdcore.config import from_dict, setting
from kdcore.errors import ConfigError, InputError
from kdcore.evaluate import evaluate_model
from kdcore.io import atomic_write_json, atomic_write_text, read_json
from kdcore.pipeline import run_kd_pipeline
from kdcore.progress import ProgressFn, no_progress
from kdcore.runs.common import environment, start_run, write_report
from kdcore.runs.configs import DemoConfig
from kdcore.runs.scenario import SPEC, build_demo_data, train_model
from kdcore.stages import Stages
from kdcore.tables import sweep_table

SCENARIOS = ("attack", "no_attack")
ROW_KEYS = (
    "seed",
    "scenario",
    "budget",
    "model",
    "clean_acc",
    "poison_acc",
    "asr",
    "flagged",
    "precision",
    "recall",
    "false_positives",
    "seconds",
)


@dataclass(frozen=True)
class SweepConfig:
    setup: DemoConfig = setting(factory=DemoConfig)
    budgets: tuple[int, ...] = setting((3_000, 6_500, 10_000), "clean-image budgets")
    scenarios: tuple[str, ...] = setting(SCENARIOS, "attack, no_attack or both")
    seeds: tuple[int, ...] = setting((0,), "seeds, one sweep each; tables show mean ± std over them")
    gather: bool = setting(
        False, "this job only gathers the rows of its parts (set by the job system when a sweep job fans out)"
    )

    def __post_init__(self) -> None:
        if not self.budgets or any(b < 10 for b in self.budgets):
            raise ConfigError(f"budgets must be a non-empty list of sizes ≥ 10; got {self.budgets}")
        if max(self.budgets) > 60_000 - self.setup.n_train:
            raise ConfigError(
                f"The largest budget {max(self.budgets)} exceeds the {60_000 - self.setup.n_train} "
                "images left out of training; lower it or n_train"
            )
        bad = set(self.scenarios) - set(SCENARIOS)
        if bad or not self.scenarios:
            raise ConfigError(f"Unknown scenario(s) {sorted(bad)}; expected some of {SCENARIOS}")
        if not self.seeds:
            raise ConfigError("seeds must not be empty")

    @classmethod
    def preset(cls, quick: bool = False, **overrides) -> SweepConfig:
        d: dict = {"setup": DemoConfig.preset(quick)}
        if quick:
            d["budgets"] = (1_000, 2_000)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return from_dict(cls, d)


SUMMARY_KEYS = ("clean_acc", "poison_acc", "asr", "flagged", "precision", "recall", "false_positives")


def part_name(scenario: str, budget: int, seed: int) -> str:
    return f"{scenario}-{budget}-seed{seed}"


def _cells(cfg: SweepConfig) -> list[tuple[str, SweepConfig]]:
    """Every cell of the sweep as (part name, a one-cell config), in run order."""
    return [
        (part_name(sc, b, sd), replace(cfg, seeds=(sd,), scenarios=(sc,), budgets=(b,), gather=False))
        for sd in cfg.seeds
        for sc in cfg.scenarios
        for b in cfg.budgets
    ]


def sweep_parts(cfg: SweepConfig) -> tuple[SweepConfig, list[tuple[str, SweepConfig, str]]] | None:
    """How a sweep job fans out: the gathering config and one part per cell `(kind, config, run
    dir relative to the gathering job's)`; None for a single cell or a config that already gathers."""
    cells = _cells(cfg)
    if cfg.gather or len(cells) < 2:
        return None
    return replace(cfg, gather=True), [("sweep", part, f"parts/{name}") for name, part in cells]


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (scenario, budget, model): `<metric>_mean`,
    `<metric>_std` (None with one seed) and `n`."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["budget"], r["model"]), []).append(r)
    out = []
    for (scenario, budget, model), rs in groups.items():
        row: dict = {"scenario": scenario, "budget": budget, "model": model, "n": len({r["seed"] for r in rs})}
        for key in SUMMARY_KEYS:
            vals = [float(r[key]) for r in rs if r.get(key) is not None]
            row[f"{key}_mean"] = statistics.fmean(vals) if vals else None
            row[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        out.append(row)
    return out


def _finish(cfg: SweepConfig, run_dir: Path, rows: list[dict], resolved: dict, device, t_all: float) -> dict:
    """sweep.csv, table.md and report.json from the rows (of this run, or gathered from parts)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_KEYS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(run_dir / "sweep.csv", buf.getvalue())
    table = sweep_table(rows)
    atomic_write_text(run_dir / "table.md", table + "\n")
    report = {
        "kind": "sweep",
        "rows": rows,
        "summary": summarise(rows),
        "seeds": list(cfg.seeds),
        "table": table,
        "config": resolved,
        **environment(device),
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    atomic_write_json(run_dir / "sweep.json", {"rows": rows})
    write_report(run_dir, report)
    return report


def gather_parts(cfg: SweepConfig, run_dir: Path, on_progress: ProgressFn) -> list[dict]:
    """The rows of every part of a fanned-out sweep (each part's sweep.json, in its run dir under
    this one); a seed's baseline and backdoor rows once. A part without results stops the gathering
    with the parts to retry."""
    rows: list[dict] = []
    seen: set[tuple] = set()
    cells = [name for name, _ in _cells(cfg)]
    missing = []
    for i, name in enumerate(cells):
        if not (run_dir / "parts" / name / "report.json").is_file():
            missing.append(name)
            continue
        for r in read_json(run_dir / "parts" / name / "sweep.json")["rows"]:
            key = (r["seed"], r["scenario"], r["budget"], r["model"])
            if key not in seen:
                seen.add(key)
                rows.append(r)
        on_progress("gather", i + 1, len(cells), {"part": name})
    if missing:
        raise InputError(
            f"{len(missing)} of {len(cells)} part(s) of this sweep have no results: {', '.join(missing[:6])}"
            f"{' …' if len(missing) > 6 else ''}. Their jobs did not succeed: retry them (Jobs page, or "
            "`kdcore jobs retry ID`), then retry this job; finished parts are not run again"
        )
    return sorted(rows, key=lambda r: (r["seed"], r["scenario"] != "-", r["scenario"], r["budget"], r["model"]))


def run_sweep(cfg: SweepConfig, run_dir: str | Path, on_progress: ProgressFn = no_progress) -> dict:
    rows: list[dict] = []
    with start_run(run_dir, "sweep", cfg, cfg.setup.device) as (run_dir, device, resolved, t_all):
        if cfg.gather:
            return _finish(cfg, run_dir, gather_parts(cfg, run_dir, on_progress), resolved, device, t_all)
        cells = len(cfg.seeds) * len(cfg.scenarios) * len(cfg.budgets)
        done = 0
        for seed in cfg.seeds:
            setup = replace(cfg.setup, seed=seed)
            data = build_demo_data(setup, n_clean=max(cfg.budgets))
            baseline, _ = train_model(setup, data, "baseline", device, on_progress)
            backdoor, _ = train_model(setup, data, "teacher", device, on_progress)
            trigger = setup.trigger_value
            for name, model in (("baseline", baseline), ("backdoor", backdoor)):
                ev = evaluate_model(model, SPEC, data.test, device, trigger)
                rows.append({"seed": seed, "scenario": "-", "budget": 0, "model": name, **ev.metrics()})
            for scenario in cfg.scenarios:
                attack = scenario == "attack"
                teacher, train = (backdoor, data.poisoned) if attack else (baseline, data.train)
                for budget in cfg.budgets:
                    t0 = time.perf_counter()
                    cell = run_dir / "cells" / f"{scenario}-{budget}-seed{seed}"
                    cell.mkdir(parents=True, exist_ok=True)
                    out = run_kd_pipeline(
                        teacher,
                        SPEC,
                        data.clean_pool.subset(list(range(budget))),
                        setup.kd,
                        Stages(run_dir / "stages"),
                        device,
                        train=train,
                        test=data.test,
                        trigger=trigger,
                        poison_idx=data.poison_idx if attack else None,
                        seed=seed,
                        run_dir=cell,
                        on_progress=lambda st, s, t, m, _c=done, _n=f"{scenario}/{budget}/seed{seed}": on_progress(
                            "sweep", _c, cells, {"cell": _n, "stage": st}
                        ),
                    )
                    d = out.detox
                    detox = {
                        "flagged": d.flagged,
                        "precision": d.precision,
                        "recall": d.recall,
                        "false_positives": d.false_positives if attack else d.flagged,
                    }
                    secs = round(time.perf_counter() - t0, 1)
                    for model in ("student", "finetuned"):
                        rows.append(
                            {
                                "seed": seed,
                                "scenario": scenario,
                                "budget": budget,
                                "model": model,
                                **out.evals[model].metrics(),
                                **detox,
                                "seconds": secs,
                            }
                        )
                    done += 1
                    on_progress("sweep", done, cells, {})
                    atomic_write_json(run_dir / "sweep.json", {"rows": rows})
        return _finish(cfg, run_dir, rows, resolved, device, t_all)
