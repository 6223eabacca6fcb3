"""The quick demo over seeds: `kdcore demo --quick --seed S` for each seed, and mean ± std per metric.

Each seed draws its own poisons, clean pool and weights, and trains its own baseline and teacher
(cached under benchmarks/out/quick_demo/cache, so a second run of the script reuses them).

    .venv/bin/python benchmarks/quick_demo.py [--seeds 0,1,2] [--device auto] [--smoke]

`--smoke` (benchmarks/common.py): seed 0 on the smallest demo (`SMOKE_SETUP`), its runs and cache in
a temporary folder.

Prints the table and writes benchmarks/results/quick_demo.json (per-seed rows, mean, std, sgemm).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import SMOKE_SETUP, log, sgemm_gflops, smoke_args, throttled, write_result  # noqa: E402
from kdcore.device import describe, resolve_device  # noqa: E402
from kdcore.report import METRICS, detection_of, models_of  # noqa: E402
from kdcore.runs.configs import DemoConfig  # noqa: E402
from kdcore.runs.demo import run_demo  # noqa: E402
from kdcore.tables import pct, spread  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "quick_demo"
ROLES = ("teacher", "student", "finetuned")
COLUMNS = [(role, m) for role in ROLES for m in METRICS] + [("detox", k) for k in ("flagged", "precision", "recall")]


def row_of(seed: int, report: dict) -> dict:
    models, det = models_of(report), detection_of(report) or {}
    row = {"seed": seed, "wall_s": report.get("wall_s")}
    for role, m in COLUMNS:
        row[f"{role}.{m}"] = det.get(m) if role == "detox" else (models.get(role) or {}).get(m)
    return row


def table(rows: list[dict]) -> str:
    lines = [f"| Model | {' | '.join(METRICS)} |", "|---|" + "---|" * len(METRICS)]
    for role in ROLES:
        lines.append(f"| {role} | " + " | ".join(spread([r[f"{role}.{m}"] for r in rows], pct) for m in METRICS) + " |")
    count = lambda v: f"{v:,.0f}"
    lines += [
        "",
        "| Detox | flagged | precision | recall |",
        "|---|---|---|---|",
        f"| KD disagreement | {spread([r['detox.flagged'] for r in rows], count)} | "
        f"{spread([r['detox.precision'] for r in rows], pct)} | {spread([r['detox.recall'] for r in rows], pct)} |",
    ]
    if len(rows) > 1:
        lines.append(f"\nMean ± standard deviation over {len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="auto")
    smoke_args(ap)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdaudit-quick-demo-smoke-") as tmp:
        out, sizes = (Path(tmp), SMOKE_SETUP) if a.smoke else (OUT, {})
        if a.smoke:
            a.seeds = "0"
        run(a, out, sizes)


def run(a: argparse.Namespace, out: Path, sizes: dict) -> None:
    """The demo for each of `a.seeds` under `out` (runs/, cache/), `sizes` merged into the quick preset."""
    device = resolve_device(a.device)
    gemm = sgemm_gflops(device, smoke=a.smoke)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",") if s.strip()]:
        log(f"seed {seed}")
        cfg = DemoConfig.preset(quick=True, seed=seed, device=a.device, cache_dir=str(out / "cache"), **sizes)
        report = run_demo(cfg, out / "runs" / f"seed{seed}", throttled())
        rows.append(row_of(seed, report))
        write_result(
            "quick_demo",
            "quick_demo.py",
            device,
            {"sgemm_gflops": round(gemm, 1), "rows": rows, "table": table(rows)},
            a.results,
        )
    print(table(rows))
    walls = [r["wall_s"] for r in rows]
    print(
        f"\nwall time per seed (median) {statistics.median(walls):.0f} s on {describe(device)}; "
        f"sgemm {gemm:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
