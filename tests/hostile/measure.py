"""Run one corpus case's reader in a fresh subprocess and measure what refusing it costs.

Peak memory is `resource.getrusage(RUSAGE_SELF).ru_maxrss` after the reader minus the same before
it (the process's idle size, with every import done), wall time is `time.perf_counter`. The child
runs under an address-space limit of its idle size + `headroom` bytes, so a guard that regresses
fails with MemoryError instead of taking the machine down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from tests.hostile.corpus import CASES, read
import kdcore.data.folders, kdcore.models.loading  # every import done before the idle size is taken
from kdcore.errors import KDCoreError

def vm_size() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0

name, path, headroom = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (vm_size() + headroom, resource.RLIM_INFINITY))
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    result = read(CASES[name], path)
    out = {"error": None, "message": "", "skipped": list(getattr(result, "skipped", ()))}
except KDCoreError as e:
    out = {"error": type(e).__name__, "message": str(e), "skipped": []}
out["seconds"] = time.perf_counter() - t0
out["peak_bytes"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - idle) * 1024  # KiB on Linux
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Measurement:
    error: str | None  # the KDCoreError subclass raised, None if the reader returned
    message: str
    skipped: tuple[str, ...]
    seconds: float
    peak_bytes: int  # above the idle size


def measure(case_name: str, path: Path, timeout: float = 120, headroom: int = 4 * 2**30) -> Measurement:
    """Read `path` with the reader of CASES[case_name] in a subprocess; raise if it crashed."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, case_name, str(path), str(headroom)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "2"},
    )
    if proc.returncode != 0:
        raise AssertionError(f"the reader crashed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(out["error"], out["message"], tuple(out["skipped"]), out["seconds"], out["peak_bytes"])
