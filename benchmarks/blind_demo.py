"""The blind quick demo against the plain one (issue 20's done-when): what the verdict costs the demo Home
runs, and what it says of the attack and of the clean scenario.

Runs `kdcore demo --quick` (seed 0) three ways in one process, one after another, all with the same
stage cache warmed first (baseline and teacher trained once, as on a machine that has run the demo
before): the attack scenario plain (no verdict), the attack scenario blind (the verdict from label-free
evidence; the trigger only evaluates) and the no-attack scenario blind. Each run starts from an empty
run folder, so distillation, detox, fine-tuning, evaluation and (blind) the verdict's evidence all run.

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
RUNS = (("attack", False), ("attack", True), ("no_attack", True))


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
        cache = out / "cache"
        gemm_before = sgemm_gflops(device, smoke=a.smoke)
        log("warming the cache: baseline and teacher of both scenarios")
        for scenario in ("attack", "no_attack"):
            run_demo(config(scenario, False, a.device, cache, a.smoke), Path(tmp) / f"warm-{scenario}", throttled())
        rows = []
        for scenario, blind in RUNS:
            run_dir = out / "runs" / f"{scenario}-{'blind' if blind else 'plain'}-{time.time_ns()}"
            t0 = time.perf_counter()
            report = run_demo(config(scenario, blind, a.device, cache, a.smoke), run_dir, throttled())
            wall = time.perf_counter() - t0
            v = report.get("verdict") or {}
            rows.append({"scenario": scenario, "blind": blind, "wall_s": round(wall, 1), "status": v.get("status"),
                         "target_classes": v.get("target_classes"), "p_backdoor": v.get("p_backdoor"),
                         "rule_status": v.get("rule_status"), "timings": report.get("timings")})  # fmt: skip
            log(
                f"{scenario} {'blind' if blind else 'plain'}: {wall:.0f} s, {v.get('status')} {v.get('target_classes')}"
            )
        gemm_after = sgemm_gflops(device, smoke=a.smoke)
    plain = rows[0]["wall_s"]
    lines = ["| run | wall s | × plain | verdict | P(backdoor) |", "|---|---|---|---|---|"]
    for r in rows:
        name = f"{r['scenario']}, {'blind' if r['blind'] else 'plain'}"
        verdict = f"{r['status']} {r['target_classes']}" if r["status"] else "—"
        p = f"{r['p_backdoor']:.2f}" if isinstance(r["p_backdoor"], float) else "—"
        lines.append(f"| {name} | {r['wall_s']:.0f} | {r['wall_s'] / plain:.2f} | {verdict} | {p} |")
    table = "\n".join(lines)
    print(table, flush=True)
    write_result("blind_demo", "blind_demo.py", device, {
        "sgemm_gflops": {"before": round(gemm_before, 1), "after": round(gemm_after, 1)},
        "rows": rows, "table": table,
    }, a.results)  # fmt: skip


if __name__ == "__main__":
    main()
