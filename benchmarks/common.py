"""What every benchmark script shares: timestamped progress on stderr, the machine's sgemm rate,
the result file (benchmarks/results/<name>.json with the command, device, torch and threads), and
the smoke run.

Every script takes `--smoke`: its smallest run, which checks that the script still starts and
reaches its first real step (tests/benchmarks/test_entry_points.py runs each one in the suite);
its numbers mean nothing. A smoke run writes its JSON where `--results` (or the script's own
`--out`) says, and its work files to a temporary folder, never over benchmarks/results or
benchmarks/out.

A script puts the repository root on sys.path before importing this module (it is run as
`python benchmarks/<script>.py`, not installed).
"""

from __future__ import annotations

import argparse
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
# DemoConfig settings of a smoke run: the smallest Fashion-MNIST demo that still runs every stage
SMOKE_SETUP = {
    "n_train": 300,
    "n_clean": 100,
    "n_poison": 15,
    "n_test": 100,
    "teacher": {"epochs": 1},
    "kd": {"distill": {"epochs": 1}, "finetune": {"epochs": 1}},
}
# Neural Cleanse settings of a smoke run (the blind audits): a few images, one round of steps
SMOKE_NC = {"n_images": 20, "n_holdout": 20, "batch_size": 10, "steps": 2, "round_steps": 1}


def smoke_args(ap: argparse.ArgumentParser, results: bool = True) -> None:
    """`--smoke` (and, with `results`, `--results DIR`) on a script's argument parser."""
    ap.add_argument("--smoke", action="store_true", help="the smallest run: checks that the script starts")
    if results:
        ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the result JSON")


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


def sgemm_gflops(device: torch.device, n: int = 2048, reps: int = 10, smoke: bool = False) -> float:
    """The machine's fp32 matrix-multiply rate (n × n, median of 5 timings of `reps` products):
    the yardstick every timing in a result file is read against. `smoke`: a 64² product, once."""
    if smoke:
        n, reps = 64, 1
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


def write_result(name: str, script: str, device: torch.device, payload: dict, folder: Path = RESULTS) -> Path:
    """<folder>/<name>.json (benchmarks/results/): the command, device, torch and threads, then
    `payload` (written atomically, so an interrupted run leaves the previous file whole)."""
    path = Path(folder) / f"{name}.json"
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
