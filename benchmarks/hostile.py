"""What refusing each hostile bomb costs: memory above idle, time, and the message (issue 11's table).

For every bomb of `tests/hostile/corpus.py` (the cases marked `bomb`, plus the FIFO folder, which
used to hang), at the corpus's full size: one fresh subprocess reads it through the reader
directly, another through `kdcore.sandbox` (the dashboard's and jobs' path), measured by
`tests/hostile/measure.py`: the idle RSS (the process, or the sandbox's fork server), the peak RSS
above it while refusing, the wall time and the message. Target: ≤ 1.5 GiB above idle and ≤ 30 s.

    .venv/bin/python benchmarks/hostile.py [--case NAME ...] [--via reader sandbox] [--out PATH] [--smoke]

`--smoke` (benchmarks/common.py): one small case that is not a bomb, through the reader only.

Prints a markdown table and writes benchmarks/results/hostile.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore.io import atomic_write_json  # noqa: E402
from tests.hostile.corpus import CASES  # noqa: E402
from tests.hostile.measure import measure  # noqa: E402

MAX_PEAK_BYTES = 1.5 * 2**30
MAX_SECONDS = 30.0
EXTRA = ("fifo_folder",)  # not a bomb by size, but it used to hang the loader
BOMBS = [name for name, case in CASES.items() if case.bomb] + list(EXTRA)
SMOKE_CASE = "oversized_claim_zip"  # small and quick to refuse


def run(names: list[str], vias: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdaudit-hostile-") as tmp:
        for name in names:
            case = CASES[name]
            folder = Path(tmp) / name
            folder.mkdir()
            t0 = time.perf_counter()
            path = case.make(folder)
            made_s = time.perf_counter() - t0
            size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*.png"))
            for via in vias:
                m = measure(name, path, timeout=300, via=via)
                ok = m.peak_bytes <= MAX_PEAK_BYTES and m.seconds <= MAX_SECONDS
                rows.append(
                    {
                        "case": name,
                        "via": via,
                        "reader": case.reader,
                        "file_bytes": size,
                        "make_s": round(made_s, 2),
                        "idle_rss_mib": round(m.idle_bytes / 2**20, 1),
                        "peak_above_idle_mib": round(m.peak_bytes / 2**20, 1),
                        "seconds": round(m.seconds, 3),
                        "outcome": m.error or f"read, skipped {len(m.skipped)}",
                        "message": m.message or "; ".join(m.skipped),
                        "within_target": ok,
                    }
                )
                print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    msg = r["message"].replace("|", "\\|")
    msg = msg if len(msg) <= 110 else msg[:107] + "…"
    return (
        f"| {r['case']} | {r['via']} | {r['idle_rss_mib']:.0f} | {r['peak_above_idle_mib']:.0f} | "
        f"{r['seconds']:.2f} | {'yes' if r['within_target'] else '**NO**'} | {r['outcome']}: {msg} |"
    )


HEADER = (
    "| case | path | idle RSS (MiB) | peak above idle (MiB) | time (s) | ≤ 1.5 GiB, ≤ 30 s | refusal |\n"
    "|---|---|---:|---:|---:|---|---|"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs="*", default=BOMBS, choices=list(CASES), help="cases to measure")
    ap.add_argument("--via", nargs="*", default=["reader", "sandbox"], choices=["reader", "sandbox"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hostile.json")
    ap.add_argument("--smoke", action="store_true", help="the smallest run: checks that the script starts")
    args = ap.parse_args()
    if args.smoke:
        args.case, args.via = [SMOKE_CASE], ["reader"]
    print(HEADER, flush=True)
    rows = run(args.case, args.via)
    atomic_write_json(
        args.out,
        {
            "command": "python benchmarks/hostile.py",
            "cpus": os.cpu_count(),
            "target": {"peak_above_idle_bytes": MAX_PEAK_BYTES, "seconds": MAX_SECONDS},
            "all_within_target": all(r["within_target"] for r in rows),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
