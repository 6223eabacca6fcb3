"""Reproduce seed 000's Table 5 (and figures 11/16–18) on Fashion-MNIST.

50,000 labelled training images (100 poisoned: 3×3 white patch lower-right → class 7), clean
budgets of 3,000 / 6,500 / 10,000 unlabelled images (6 / 13 / 20 % of the training set), both
"under attack" and "no attack". Teacher/baseline: 8 epochs (paper: 50); KD: 30 epochs (paper: 50),
T = 20; fine-tuning ≤ 5 epochs at 1e-4 with early stopping on a slice of the detoxified set.

    .venv/bin/python benchmarks/table5.py [--seeds 0,1,2] [--device auto] [--quick] [--smoke]

`--smoke` (benchmarks/common.py): seed 0, one budget of 100 images, under attack only, on the
smallest demo (`SMOKE_SETUP`); its stages and cache in a temporary folder.

Prints the table and writes benchmarks/results/table5.json (rows, table, wall time, device).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import SMOKE_SETUP, smoke_args  # noqa: E402
from kdcore.config import to_dict  # noqa: E402
from kdcore.io import atomic_write_json  # noqa: E402
from kdcore.runs.configs import DemoConfig  # noqa: E402
from kdcore.runs.sweep import SweepConfig, run_sweep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="the quick demo setup (minutes, not an hour)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "table5")
    ap.add_argument("--cache-dir", default=str(ROOT / "benchmarks" / "out" / "cache"))
    smoke_args(ap)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdaudit-table5-smoke-") as tmp:
        if a.smoke:
            a.seeds, a.out, a.cache_dir = "0", Path(tmp) / "table5", str(Path(tmp) / "cache")
        run(a)


def run(a: argparse.Namespace) -> None:
    seeds = tuple(int(s) for s in a.seeds.split(","))
    sizes = SMOKE_SETUP if a.smoke else {}
    setup = {**to_dict(DemoConfig.preset(a.quick, **sizes)), "device": a.device, "cache_dir": a.cache_dir}
    smallest = {"budgets": (100,), "scenarios": ("attack",)} if a.smoke else {}
    cfg = SweepConfig.preset(a.quick, seeds=seeds, setup=setup, **smallest)
    last = [0.0]

    def progress(stage, step, total, metrics):
        now = time.time()
        if now - last[0] > 30:
            last[0] = now
            print(f"[{time.strftime('%H:%M:%S')}] {stage} {step}/{total} {metrics}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    report = run_sweep(cfg, a.out, progress)
    wall = time.perf_counter() - t0
    print(report["table"])
    print(f"\nwall time {wall:.0f} s on {report['device']}")
    name = "table5_quick.json" if a.quick else "table5.json"
    atomic_write_json(
        a.results / name,
        {
            "command": " ".join(["python", "benchmarks/table5.py", *sys.argv[1:]]),
            "wall_s": round(wall, 1),
            "device": report["device"],
            "torch": report["torch"],
            "config": report["config"],
            "rows": report["rows"],
            "table": report["table"],
        },
    )


if __name__ == "__main__":
    main()
