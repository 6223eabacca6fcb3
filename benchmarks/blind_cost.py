"""What Neural Cleanse costs a blind audit, and what batching and early stopping save: the blind audit
(`kdcore.verdict.gather.blind_audit`) of the quick demo's teacher, once per Neural Cleanse variant, in
one process, interleaved, `--repeats` times (medians reported).

Variants (every other Neural Cleanse setting at its default; same teacher, student, images and seed):

    per-class   classes_per_pass=1, early_stop_patience=0: one class after another, all `steps` each
                (the authors' loop)
    batched     classes_per_pass=10, early_stop_patience=0: every class in one batch of K·B images
                per step, all `steps` (kdcore before early stopping)
    early-stop  the defaults: batched, and a class whose best mask stopped shrinking leaves the batch

The teacher is the quick demo's (`DemoConfig.preset(quick=True)`, seed 0), trained once and cached as
`kdcore.runs.scenario` caches it; the student and the detox table come from the method's own cached
stages (no fine-tuning: the blind audit never reads it), under benchmarks/out/blind_cost/.

    nice .venv/bin/python benchmarks/blind_cost.py [--repeats 3] [--device cpu] [--smoke]

`--smoke` (benchmarks/common.py): the smallest demo (`SMOKE_SETUP`, `SMOKE_NC`), one repeat, in a
temporary folder. Prints the tables; writes benchmarks/results/blind_cost.json (every timing, each
variant's findings, sgemm measured before and after the audits).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import SMOKE_NC, SMOKE_SETUP, log, sgemm_gflops, smoke_args, write_result  # noqa: E402
from kdcore.device import describe, resolve_device  # noqa: E402
from kdcore.pipeline import PipelineOutput, kd_stages  # noqa: E402
from kdcore.runs.configs import DemoConfig  # noqa: E402
from kdcore.runs.scenario import SPEC, build_demo_data, train_model  # noqa: E402
from kdcore.stages import Stages  # noqa: E402
from kdcore.verdict.gather import blind_audit  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "blind_cost"
VARIANTS = {
    "per-class": {"classes_per_pass": 1, "early_stop_patience": 0},
    "batched": {"classes_per_pass": 10, "early_stop_patience": 0},
    "early-stop": {},
}
BEFORE = "per-class"
NO_FINETUNE = {"kd": {"finetune": {"epochs": 0}}}  # the blind audit reads the student and the detox table only


def setup(out: Path, device_name: str, sizes: dict):
    """The quick demo's data, teacher (cached), student and detox table (cached stages)."""
    cfg = DemoConfig.preset(
        quick=True, seed=0, device=device_name, cache_dir=str(out / "cache"), **{**NO_FINETUNE, **sizes}
    )
    device = resolve_device(device_name)
    data = build_demo_data(cfg)
    t0 = time.perf_counter()
    teacher, _ = train_model(cfg, data, "teacher", device)
    kd = kd_stages(
        teacher, SPEC, data.clean_pool, cfg.kd, Stages(out / "stages"), device, PipelineOutput(),
        train=data.poisoned, poison_idx=data.poison_idx, seed=cfg.seed,
    )  # fmt: skip
    log(f"teacher and student ready ({time.perf_counter() - t0:.0f} s; cached after the first run)")
    return cfg, device, data, teacher, kd


def audit(setup_out, params: dict) -> tuple[float, object]:
    """One blind audit with Neural Cleanse at `params`: (wall seconds, BlindOutput)."""
    cfg, device, data, teacher, kd = setup_out
    student, s_spec = kd.models["student"]
    t0 = time.perf_counter()
    out = blind_audit(
        teacher, student, SPEC, data.clean_pool, device,
        table=kd.table, train=data.poisoned, poison_idx=data.poison_idx, student_spec=s_spec, seed=cfg.seed,
        nc_params=params,
    )  # fmt: skip
    return time.perf_counter() - t0, out


def findings(out, target: int) -> dict:
    """What a variant found: NC's flagged and most anomalous classes, the target's anomaly index, every
    class's mask ℓ1 and steps, and the verdict."""
    nc, v = out.neural_cleanse, out.verdict.to_dict()
    rows = nc["classes"]
    return {
        "flagged": nc["flagged"],
        "most_anomalous": nc["most_anomalous"]["class"],
        "target_anomaly_index": rows[target]["anomaly_index"],
        "l1": [r["l1"] for r in rows],
        "steps": [r["steps"] for r in rows],
        "verdict_status": v["status"],
        "verdict_targets": v["target_classes"],
    }


def tables(summary: dict, found: dict, names: list[str], target: int) -> str:
    lines = [
        f"| Neural Cleanse | NC s | blind audit s | NC speed-up vs {BEFORE} | audit speed-up vs {BEFORE} | "
        "class-steps run |",
        "|---|---|---|---|---|---|",
    ]
    base = summary[BEFORE]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['nc_s']:.1f} | {s['audit_s']:.1f} | {base['nc_s'] / s['nc_s']:.2f} | "
            f"{base['audit_s'] / s['audit_s']:.2f} | {sum(found[name]['steps']):,} |"
        )
    lines += ["", "| class | " + " | ".join(f"ℓ1 {n}" for n in found) + " | steps (early-stop) |"]
    lines.append("|---|" + "---|" * (len(found) + 1))
    for c, cname in enumerate(names):
        cells = " | ".join(f"{f['l1'][c]:.2f}" + (" 🚩" if c in f["flagged"] else "") for f in found.values())
        lines.append(f"| {c} {cname} | {cells} | {found['early-stop']['steps'][c]} |")
    lines += ["", "| finding | " + " | ".join(found) + " |", "|---|" + "---|" * len(found)]
    show = {
        "flagged classes": lambda f: ", ".join(names[c] for c in f["flagged"]) or "none",
        "most anomalous class": lambda f: names[f["most_anomalous"]],
        f"anomaly index of the target ({names[target]})": lambda f: f"{f['target_anomaly_index']:.2f}",
        "verdict": lambda f: f"{f['verdict_status']} → {', '.join(names[c] for c in f['verdict_targets']) or '—'}",
    }
    for label, fn in show.items():
        lines.append(f"| {label} | " + " | ".join(fn(f) for f in found.values()) + " |")
    return "\n".join(lines)


def payload(rows: list[dict], found: dict, gemm: list[float], nc_extra: dict, target: int) -> dict:
    """The result file's content from the repeats run so far (medians per variant, ratios, tables)."""
    summary = {
        name: {
            "nc_s": statistics.median(r["neural-cleanse"] for r in rows if r["variant"] == name),
            "audit_s": statistics.median(r["audit_s"] for r in rows if r["variant"] == name),
        }
        for name in VARIANTS
    }
    return {
        "sgemm_gflops": [round(g, 1) for g in gemm],  # before the audits, then after each repeat
        "repeats": max(r["repeat"] for r in rows) + 1,
        "variants": VARIANTS,
        "nc_settings": nc_extra,
        "rows": rows,
        "summary": summary,
        "ratio_nc": round(summary[BEFORE]["nc_s"] / summary["early-stop"]["nc_s"], 3),
        "ratio_audit": round(summary[BEFORE]["audit_s"] / summary["early-stop"]["audit_s"], 3),
        "findings": found,
        "table": tables(summary, found, list(SPEC.names), target),
    }


def run(a: argparse.Namespace, out: Path, sizes: dict, nc_extra: dict) -> None:
    device = resolve_device(a.device)
    gemm = [sgemm_gflops(device, smoke=a.smoke)]
    s = setup(out, a.device, sizes)
    target = s[0].trigger_value.target
    rows, found = [], {}
    for rep in range(a.repeats):
        for name, params in VARIANTS.items():  # interleaved: a change of load hits every variant alike
            wall, blind = audit(s, {**nc_extra, **params})
            rows.append({"variant": name, "repeat": rep, "audit_s": round(wall, 2), **blind.timings})
            found.setdefault(name, findings(blind, target))
            log(f"repeat {rep} {name}: blind audit {wall:.1f} s, NC {blind.timings['neural-cleanse']:.1f} s")
        gemm.append(sgemm_gflops(device, smoke=a.smoke))
        result = payload(rows, found, gemm, nc_extra, target)
        write_result("blind_cost", "blind_cost.py", device, result, a.results)  # after every repeat
    print(result["table"])
    print(
        f"\nmedians of {a.repeats} on {describe(device)}; sgemm {', '.join(f'{g:.0f}' for g in gemm)} GFLOP/s "
        "(before the audits, then after each repeat)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    smoke_args(ap)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdaudit-blind-cost-smoke-") as tmp:
        if a.smoke:
            a.repeats = 1
            run(a, Path(tmp), SMOKE_SETUP, SMOKE_NC)
        else:
            run(a, OUT, {}, {})


if __name__ == "__main__":
    main()
