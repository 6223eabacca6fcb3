"""Run one corpus case's reader in a fresh subprocess and measure what refusing it costs.

Two paths: `via="reader"` calls the reader directly in the measured process; `via="sandbox"` calls
it through `kdcore.sandbox` as the dashboard and jobs do (`read_sandboxed`), and then what is
measured is the sandbox's child, forked from a fork server started (and counted idle) before the
clock starts. Peak memory, reader: `resource.getrusage(RUSAGE_SELF).ru_maxrss` after the reader minus
the same before it (the process's idle size, with every import done); sandbox: the child's peak RSS
(from wait4, as the sandbox logs it) minus the peak of a child that read nothing (a first call, which
also waits for the fork server to be up).
Wall time is `time.perf_counter` around the call. The process runs under an address-space limit of
its idle size + `headroom` bytes, so a guard that regresses fails with MemoryError instead of
taking the machine down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.hostile.corpus import SPEC_ARGS, Case

CHILD = r"""
import json, logging, resource, sys, time
from pathlib import Path
from tests.hostile.corpus import CASES, read
from tests.hostile.measure import read_sandboxed, rss_of
import kdcore.data.folders, kdcore.models.loading, kdcore.sandbox  # imports done before the idle size
from kdcore.errors import KDCoreError

def vm_size() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0

class Peaks(logging.Handler):  # the sandbox logs each child's peak RSS (MiB, from wait4)
    peak_mib = 0.0
    def emit(self, record):
        if record.getMessage().startswith("sandbox:") and isinstance(record.args, tuple):
            Peaks.peak_mib = max(Peaks.peak_mib, float(record.args[4]))

name, path, headroom, via = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
resource.setrlimit(resource.RLIMIT_AS, (vm_size() + headroom, resource.RLIM_INFINITY))
call = read if via == "reader" else read_sandboxed
if via == "sandbox":
    logger = logging.getLogger("kdcore")
    logger.addHandler(Peaks())
    logger.setLevel(logging.INFO)
    try:  # a child that reads nothing; the call also waits for the fork server to be up
        kdcore.sandbox.read_spec(path.parent / "no-such-file.safetensors")
    except KDCoreError:
        pass
    idle_bytes = int(Peaks.peak_mib * 2**20)  # the peak of a child that read nothing
    Peaks.peak_mib = 0.0
else:
    idle_bytes = rss_of("self")
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    result = call(CASES[name], path)
    out = {"error": None, "message": "", "skipped": list(getattr(result, "skipped", ()))}
except KDCoreError as e:
    out = {"error": type(e).__name__, "message": str(e), "skipped": []}
out["seconds"] = time.perf_counter() - t0
out["idle_bytes"] = idle_bytes
if via == "sandbox":
    out["peak_bytes"] = max(int(Peaks.peak_mib * 2**20) - idle_bytes, 0)
else:
    out["peak_bytes"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - idle) * 1024  # KiB on Linux
print(json.dumps(out))
"""


def rss_of(pid: int | str) -> int:
    """Resident set size of a process now, in bytes (/proc/<pid>/status)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def read_sandboxed(case: Case, path: Path) -> object:
    """Run the reader of `case` through `kdcore.sandbox`, the way the dashboard and jobs reach it:
    the New-audit model check (`check_model`) and stored spec (`read_spec`), Explain's
    `decode_image`, and the jobs' image-set loaders."""
    from kdcore import sandbox
    from kdcore.models.spec import ModelSpec

    shape = case.kwargs.get("shape", (1, 8, 8))
    if case.reader == "spec":
        return sandbox.read_spec(path)
    if case.reader in ("model", "stored_spec_model"):
        return sandbox.check_model(path, ModelSpec(*SPEC_ARGS) if case.reader == "model" else None)
    if case.reader == "image":
        return sandbox.decode_image(path.read_bytes(), shape, path.name)
    if case.reader == "unlabeled":
        return sandbox.load_unlabeled(path, shape)
    return sandbox.load_labeled(path, shape, case.kwargs.get("class_names"))


@dataclass(frozen=True)
class Measurement:
    error: str | None  # the KDCoreError subclass raised, None if the reader returned
    message: str
    skipped: tuple[str, ...]
    seconds: float
    peak_bytes: int  # above the idle size
    idle_bytes: int = 0  # RSS of the measured process (reader) or peak of an idle sandbox child


def measure(
    case_name: str,
    path: Path,
    timeout: float = 120,
    headroom: int = 4 * 2**30,
    via: Literal["reader", "sandbox"] = "reader",
) -> Measurement:
    """Read `path` with the reader of CASES[case_name] in a subprocess; raise if it crashed."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, case_name, str(path), str(headroom), via],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
    )
    if proc.returncode != 0:
        raise AssertionError(f"the reader crashed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(
        out["error"], out["message"], tuple(out["skipped"]), out["seconds"], out["peak_bytes"], out["idle_bytes"]
    )
