"""The blind quick demo against the plain one (issue 20's done-when): what the verdict costs the demo Home
runs, and what it says of the attack and of the clean scenario.

Runs `kdcore demo --quick` (seed 0) five ways in one process, one after another:
- cold, as a user's first click runs it (baseline and teacher trained, each in a cache of its own): the
  attack scenario plain (no verdict) and blind (the verdict from label-free evidence; the trigger only
  evaluates);
- warm, as every later click runs it (baseline and teacher from the first cold run's cache): attack
  plain, attack blind, and the no-attack scenario blind.
Each run starts from an empty run folder, so distillation, detox, fine-tuning, evaluation and (blind)
the verdict's evidence all run. The ratios compare each blind run with the plain run of its kind.

    .venv/bin/python benchmarks/blind_demo.py [--device auto] [--smoke]

Prints a table (wall time, ratio to the plain run, the verdict with P(backdoor)) and writes
benchmarks/results/blind_demo.json with sgemm measured before and after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import SMOKE_NC, SMOKE_SETUP, log, sgemm_gflops, smoke_args, throttled, write_result  # noqa: E402
from kdcore.device import resolve_device  # noqa: E402
from kdcore.runs.configs import DemoConfig  # noqa: E402
from kdcore.runs.demo import run_demo  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "blind_demo"
# (scenario, blind, the stage cache it runs on): "first" starts empty and is warm after the first run,
# "other" starts empty for the cold blind run
RUNS = (
    ("attack", False, "first"),
    ("attack", True, "other"),
    ("attack", False, "first"),
    ("attack", True, "first"),
    ("no_attack", True, "first"),
)


def config(scenario: str, blind: bool, device: str, cache: Path, smoke: bool) -> DemoConfig:
    extra = {**SMOKE_SETUP, "neural_cleanse": SMOKE_NC} if smoke else {}
    return DemoConfig.preset(quick=True, seed=0, scenario=scenario, blind=blind, device=device,
                             cache_dir=str(cache), **extra)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    smoke_args(ap)
    a = ap.parse_args()
    device = resolve_device(a.device)
    with tempfile.TemporaryDirectory(prefix="kdaudit-blind-demo-") as tmp:
        out = Path(tmp) if a.smoke else OUT
        gemm_before = sgemm_gflops(device, smoke=a.smoke)
        rows = []
        for i, (scenario, blind, cache) in enumerate(RUNS):
            kind = "cold" if i < 2 else "warm"  # the caches live in `tmp`: every invocation starts cold
            run_dir = out / "runs" / f"{scenario}-{'blind' if blind else 'plain'}-{kind}-{time.time_ns()}"
            cfg = config(scenario, blind, a.device, Path(tmp) / f"cache-{cache}", a.smoke)
            t0 = time.perf_counter()
            report = run_demo(cfg, run_dir, throttled())
            wall = time.perf_counter() - t0
            v = report.get("verdict") or {}
            rows.append({"scenario": scenario, "blind": blind, "cache": kind, "wall_s": round(wall, 1),
                         "status": v.get("status"), "target_classes": v.get("target_classes"),
                         "p_backdoor": v.get("p_backdoor"), "rule_status": v.get("rule_status"),
                         "timings": report.get("timings")})  # fmt: skip
            log(f"{scenario} {'blind' if blind else 'plain'} ({kind}): {wall:.0f} s, {v.get('status')} "
                f"{v.get('target_classes')}")  # fmt: skip
        gemm_after = sgemm_gflops(device, smoke=a.smoke)
    plain = {r["cache"]: r["wall_s"] for r in rows if not r["blind"]}
    lines = ["| run | cache | wall s | × plain | verdict | P(backdoor) |", "|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{r['scenario']}, {'blind' if r['blind'] else 'plain'}"
        verdict = f"{r['status']} {r['target_classes']}" if r["status"] else "—"
        p = f"{r['p_backdoor']:.2f}" if isinstance(r["p_backdoor"], float) else "—"
        ratio = r["wall_s"] / plain[r["cache"]]
        lines.append(f"| {name} | {r['cache']} | {r['wall_s']:.0f} | {ratio:.2f} | {verdict} | {p} |")
    table = "\n".join(lines)
    print(table, flush=True)
    write_result("blind_demo", "blind_demo.py", device, {
        "sgemm_gflops": {"before": round(gemm_before, 1), "after": round(gemm_after, 1)},
        "rows": rows, "table": table,
    }, a.results)  # fmt: skip


if __name__ == "__main__":
    main()
