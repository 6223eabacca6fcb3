"""The long fuzz run: tests/hostile/test_fuzz.py with many more inputs, and what it found.

    .venv/bin/python benchmarks/fuzz.py [--examples 100000] [--out PATH] [--smoke]

Runs pytest on the fuzz tests with KDAUDIT_FUZZ_EXAMPLES (split across the targets in the
proportions of the default run) and KDAUDIT_FUZZ_SUMMARY, then writes benchmarks/results/fuzz.json:
inputs and reader calls per target, seconds per target, wall time, pytest's outcome and the
failures it reported. `FIXED` lists the bugs earlier runs found, each fixed in its reader and kept
as a regression case (tests/hostile/test_fuzz.py::test_found_by_the_fuzzer). `--smoke`
(benchmarks/common.py): one input per fuzz target, without the corpus and regression cases.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore.io import atomic_write_json  # noqa: E402

FIXED = [
    {
        "case": "spec_std_int_past_float",
        "found": "ModelSpec.from_dict with an integer past 1.8e308 in mean/std: OverflowError",
        "fix": "kdcore/models/spec.py: _finite converts through _as_float (an int too large for a float is inf)",
    },
    {
        "case": "spec_int_over_4300_digits",
        "found": "ModelSpec.from_json with an integer of more than 4300 digits: ValueError from json.loads",
        "fix": "kdcore/models/spec.py: from_json turns every ValueError of json.loads into ConfigError",
    },
    {
        "case": "zip_without_entries",
        "found": "a zip with no entries: ValueError from zip(strict=True) in the overlap check",
        "fix": "kdcore/archive.py: _check_no_overlap returns early when the archive has no entries",
    },
    {
        "case": "torch_zip_without_entries",
        "found": "a .pt starting with a local header but listing no entries: IndexError on names[0]",
        "fix": "kdcore/models/torchfile.py: no folder (so 'no data.pkl') when the archive lists no entries",
    },
    {
        "case": "local_name_not_utf8",
        "found": "a member whose local header name, flagged UTF-8, does not decode: UnicodeDecodeError on read",
        "fix": "kdcore/archive.py: SafeZip._stream reports it as a damaged member (CorruptMemberError)",
    },
    {
        "case": "zip_name_with_newline / folder_name_with_newline",
        "found": "a member or file name holding a newline split the error message over two lines",
        "fix": "kdcore/archive.py, kdcore/data/folders.py: names in messages are quoted with repr",
    },
    {
        "case": "torch_zip_name_with_newline",
        "found": "a .pt zip whose first entry name holds a newline split the 'no data.pkl' message",
        "fix": "kdcore/models/torchfile.py: the names listed there are quoted with repr",
    },
    {
        "case": "bytearray_under_the_element_budget",
        "found": "a 1 KB .pt with bytearray(900_000_000) passed max_tensor_elements (1e9) and took 900 MB (the 75k run "
        "crossed the 1.5 GiB RSS bound)",
        "fix": "kdcore/models/pickle_scan.py: bytes of bytearray(n) and constructor calls capped at max_pickle_bytes",
    },
    {
        "case": "name_starting_with_nul",
        "found": "a zip entry named '\\x00…': zipfile cuts names at NUL, and ZipInfo.is_dir raised IndexError",
        "fix": "kdcore/archive.py: _check_entries refuses a name holding a NUL byte (InputError)",
    },
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=100_000, help="inputs in total, across the targets")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.json")
    ap.add_argument("--smoke", action="store_true", help="the smallest run: checks that the script starts")
    args = ap.parse_args()
    if args.smoke:
        args.examples = 1  # one input per target
    with tempfile.TemporaryDirectory(prefix="kdaudit-fuzz-") as tmp:
        summary = Path(tmp) / "summary.json"
        env = {**os.environ, "KDAUDIT_FUZZ_EXAMPLES": str(args.examples), "KDAUDIT_FUZZ_SUMMARY": str(summary)}
        env["PYTHONPATH"] = str(ROOT)
        cmd = [sys.executable, "-m", "pytest", "tests/hostile/test_fuzz.py", "-q", "-p", "no:cacheprovider"]
        cmd += ["--tb=line", "-o", "timeout=0"]
        if args.smoke:
            cmd += ["-k", "not corpus_case and not found_by_the_fuzzer"]
        t0, c0 = time.perf_counter(), os.times()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall, c1 = time.perf_counter() - t0, os.times()
        counts = json.loads(summary.read_text()) if summary.is_file() else {}
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    failures = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    result = {
        "command": f"KDAUDIT_FUZZ_EXAMPLES={args.examples} python -m pytest tests/hostile/test_fuzz.py",
        "examples_requested": args.examples,
        "inputs_total": sum(counts.get("inputs", {}).values()),
        "reader_calls_total": sum(counts.get("reader_calls", {}).values()),
        "inputs": counts.get("inputs", {}),
        "reader_calls": counts.get("reader_calls", {}),
        "seconds_per_target": {k: round(v, 1) for k, v in counts.get("seconds", {}).items()},
        "peak_rss_growth_bytes": counts.get("peak_rss_growth_bytes"),
        "wall_s": round(wall, 1),
        "cpu_s": round((c1.children_user + c1.children_system) - (c0.children_user + c0.children_system), 1),
        "cpus": os.cpu_count(),
        "pytest_exit_code": proc.returncode,
        "pytest_summary": tail[0],
        "failures_this_run": failures,
        "found_and_fixed_earlier": FIXED,
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("inputs_total", "wall_s", "pytest_summary")}))
    if proc.returncode:
        print(re.sub(r"\n{3,}", "\n\n", proc.stdout[-6000:]))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
