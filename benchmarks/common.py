"""What every benchmark script shares: timestamped progress on stderr, the machine's sgemm rate,
and the result file (benchmarks/results/<name>.json with the command, device, torch and threads).

A script puts the repository root on sys.path before importing this module (it is run as
`python benchmarks/<script>.py`, not installed).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kdcore.device import describe
from kdcore.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def log(msg: str) -> None:
    """One timestamped line on stderr (stdout keeps the tables)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def throttled(every_s: float = 60.0) -> Callable[..., None]:
    """A kdcore progress callback that logs at most one line per `every_s` seconds."""
    last = [0.0]

    def progress(stage, step, total, metrics) -> None:
        if time.time() - last[0] > every_s:
            last[0] = time.time()
            log(f"  {stage} {step}/{total}")

    return progress


def sgemm_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """The machine's fp32 matrix-multiply rate (n × n, median of 5 timings of `reps` products):
    the yardstick every timing in a result file is read against."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def command(script: str) -> str:
    """The command line that produced a result, as README shows it."""
    return " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])


def write_result(name: str, script: str, device: torch.device, payload: dict) -> Path:
    """benchmarks/results/<name>.json: the command, device, torch and threads, then `payload`
    (written atomically, so an interrupted run leaves the previous file whole)."""
    path = RESULTS / f"{name}.json"
    atomic_write_json(
        path,
        {
            "command": command(script),
            "device": describe(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            **payload,
        },
    )
    return path
