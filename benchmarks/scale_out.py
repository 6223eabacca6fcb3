"""One sweep, three ways on this machine: the local executor with one worker, with two workers,
and the Ray executor on a two-node test cluster (`ray.cluster_utils.Cluster`, one CPU per node).

The sweep (Fashion-MNIST, paper CNN, 3 seeds × 2 budgets, attack only, small sizes) is submitted
as a job, so it fans out into 6 parts and a gathering job; each executor runs the same job graph
in a fresh data directory with a fresh stage cache, so every configuration trains its own teachers.
All nodes are processes on this one machine: the figures are about the executors' overhead and
the parallelism two cores allow, not about a real cluster.

    .venv/bin/python benchmarks/scale_out.py [--repeats 1] [--smoke]

`--smoke` (benchmarks/common.py): the local executor with one worker only, once, on a sweep of one
part (seed 0, one budget, the smallest demo `SMOKE_SETUP`).

Prints a table and writes benchmarks/results/scale_out.json (median wall time per configuration over
`--repeats` interleaved runs, its ratio to one local worker, the Ray cluster's start-up time apart,
and the machine's sgemm rate measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import SMOKE_SETUP, log, sgemm_gflops, smoke_args, write_result  # noqa: E402
from kdcore.jobs.store import JobStore  # noqa: E402

SETUP = {
    "n_train": 3000,
    "n_clean": 600,
    "n_poison": 60,
    "n_test": 1000,
    "teacher": {"epochs": 2},
    "kd": {"distill": {"epochs": 3}, "finetune": {"epochs": 1}},
}
SWEEP = {"budgets": [300, 600], "scenarios": ["attack"], "seeds": [0, 1, 2]}
SMOKE_SWEEP = {"budgets": [100], "scenarios": ["attack"], "seeds": [0]}
HOWS = ("local, 1 worker", "local, 2 workers", "ray, 2-node cluster")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core per job, as the Ray tasks get (num_cpus=1)


def worker(data: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kdcore", "worker", "--data-dir", str(data), "--device", "cpu", "--drain", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def one_sweep(how: str, setup: dict = SETUP, sweep: dict = SWEEP) -> tuple[float, dict]:
    """Submit the sweep in a fresh data dir and run it to the end the way `how` says: (wall s from
    the workers' start to the last job's end, facts). Starting the Ray cluster is timed apart
    (`cluster_start_s`): a real cluster is up before the work arrives."""
    with tempfile.TemporaryDirectory(prefix="kdaudit-scale-") as tmp:
        data = Path(tmp)
        store = JobStore(data)
        job = store.submit("sweep", {"setup": {**setup, "cache_dir": str(data / "cache")}, **sweep})
        cluster, facts = None, {}
        if how == "ray, 2-node cluster":
            from ray.cluster_utils import Cluster

            t_up = time.perf_counter()
            node = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
            cluster = Cluster(initialize_head=True, head_node_args={**node, "resources": {"node_a": 1}})
            cluster.add_node(**node, resources={"node_b": 1})
            cluster.wait_for_nodes()
            facts["cluster_start_s"] = round(time.perf_counter() - t_up, 1)
        t0 = time.perf_counter()
        if cluster is not None:
            procs = [worker(data, "--executor", "ray", "--ray-address", cluster.address)]
        else:
            procs = [worker(data) for _ in range(2 if how == "local, 2 workers" else 1)]
        try:
            while not store.get(job.id).terminal:  # the workers linger --drain's few idle seconds
                time.sleep(0.2)
            wall = time.perf_counter() - t0
            for p in procs:
                p.wait(timeout=600)
        finally:
            if cluster is not None:
                cluster.shutdown()
        done = store.get(job.id)
        if done.state != "succeeded":
            raise SystemExit(f"{how}: the sweep ended {done.state}: {done.error}")
        parts = store.group(job.id)
        facts |= {"parts": len(parts), "nodes": sorted({p.node.split()[-1] for p in parts if p.node})}
        return wall, facts


def table_of(rows: list[dict]) -> str:
    lines = [
        "| executor | sweep wall time (s), median | runs (s) | ratio to 1 local worker | parts | nodes used |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['executor']} | {row['wall_s']:.1f} | {', '.join(f'{w:.1f}' for w in row['all_wall_s'])} | "
            f"{row['ratio_to_one_worker']:.2f} | {row['parts']} | {', '.join(row['nodes']) or '—'} |"
        )
    ups = [r["cluster_start_s"] for r in rows if "cluster_start_s" in r]
    if ups:
        lines.append(f"\nStarting the 2-node test cluster took {ups[-1]:.1f} s more (not in the wall times above).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each configuration (median reported)")
    smoke_args(ap)
    a = ap.parse_args()
    setup, sweep, hows = (SMOKE_SETUP, SMOKE_SWEEP, HOWS[:1]) if a.smoke else (SETUP, SWEEP, HOWS)
    if a.smoke:
        a.repeats = 1
    gemm = sgemm_gflops(torch.device("cpu"), smoke=a.smoke)
    walls: dict[str, list[float]] = {h: [] for h in hows}
    facts: dict[str, dict] = {}
    for r in range(a.repeats):
        for how in hows:  # interleaved, so a change in machine load touches every configuration
            log(f"run {r + 1}/{a.repeats}: {how}")
            wall, facts[how] = one_sweep(how, setup, sweep)
            walls[how].append(wall)
            log(f"  {wall:.1f} s")
    base = statistics.median(walls[hows[0]])
    rows = [
        {
            "executor": how,
            "wall_s": round(statistics.median(walls[how]), 1),
            "all_wall_s": [round(w, 1) for w in walls[how]],
            "ratio_to_one_worker": round(statistics.median(walls[how]) / base, 2),
            **facts[how],
        }
        for how in hows
    ]
    table = table_of(rows)
    print(table)
    print(f"\nsgemm {gemm:.0f} GFLOP/s on this machine in the same run; {os.cpu_count()} cores")
    write_result(
        "scale_out",
        "scale_out.py",
        torch.device("cpu"),
        {"sgemm_gflops": round(gemm, 1), "setup": setup, "sweep": sweep, "rows": rows, "table": table},
        a.results,
    )


if __name__ == "__main__":
    main()
