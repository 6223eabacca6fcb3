"""Where jobs run, in words for the Jobs page: the Ray cluster, the node a job ran on, a fan-out's parts.

The Ray dispatcher (`kdcore.jobs.ray_executor`) writes `<data dir>/ray-cluster.json` every ~10 s while
it runs and deletes it on exit; a file older than `FRESH_S` is left over from one that was killed, so
it is not shown. A job's `node` is the executor's label "ADDRESS NODE-ID-PREFIX [CUSTOM RESOURCES …]"
(`ray_executor.node_label`). A fan-out job's parts are the jobs whose `group_id` is it, or any job
it retries (a retry keeps the run directory); a part that was retried counts once, by its newest try.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from app.state import STATE_ICON
from kdcore.jobs.store import Job

CLUSTER_FILE = "ray-cluster.json"
FRESH_S = 60.0  # the dispatcher rewrites the file every ~10 s


def cluster_status(data_dir: str | Path, now: float | None = None) -> dict | None:
    """The Ray dispatcher's last cluster report, or None when there is none or it is stale."""
    p = Path(data_dir) / CLUSTER_FILE
    try:
        status = json.loads(p.read_text())
    except (OSError, ValueError):  # no dispatcher, or the file went away mid-read: no panel this refresh
        return None
    at = status.get("at") if isinstance(status, dict) else None
    if not isinstance(at, int | float) or (now or time.time()) - at > FRESH_S:
        return None
    return status


def _num(x: float) -> str:
    return f"{float(x):g}"


def cluster_line(status: dict) -> str:
    """ "Ray cluster at ADDR: N nodes · free CPU a of b · GPU c of d" ("no GPU" when it has none; "on this
    machine" for the one-machine cluster the dispatcher starts without --ray-address)."""
    free, total, nodes = status.get("available", {}), status.get("total", {}), status.get("nodes", [])
    n = len(nodes)
    gpu = f"GPU {_num(free.get('GPU', 0))} of {_num(total['GPU'])}" if total.get("GPU") else "no GPU"
    address = status.get("address") or "local"
    where = "on this machine" if address == "local" else f"at {address}"  # the dispatcher started it
    return (
        f"Ray cluster {where}: {n} node{'s' * (n != 1)} · "
        f"free CPU {_num(free.get('CPU', 0))} of {_num(total.get('CPU', 0))} · {gpu}"
    )


def node_lines(status: dict) -> list[str]:
    """One line per node: its label, then its CPUs and GPUs."""
    out = []
    for n in status.get("nodes", []):
        res = n.get("resources", {})
        has = [f"{_num(res[k])} {k}" for k in ("CPU", "GPU") if res.get(k)]
        out.append(" · ".join([n.get("node", "?"), *has]))
    return out


def node_short(node: str) -> str:
    """A job's node label, short: its address and custom resources ("127.0.0.1 node_b"); the node id's
    first 6 characters stand in when it has no custom resource."""
    words = node.split()
    if len(words) > 2:
        return " ".join([words[0], *words[2:]])
    return f"{words[0]} {words[1][:6]}" if len(words) == 2 else node


def fan_outs(jobs: list[Job]) -> dict[int, list[Job]]:
    """{id of a fan-out job (or of a retry of one): its parts, oldest first} from a listing of jobs."""
    by_id = {j.id: j for j in jobs}
    by_dir: dict[str, list[Job]] = {}
    for p in sorted(jobs, key=lambda j: j.id):
        if p.group_id is not None and p.group_id in by_id:
            by_dir.setdefault(by_id[p.group_id].run_dir, []).append(p)
    return {j.id: by_dir[j.run_dir] for j in jobs if j.group_id is None and j.run_dir in by_dir}


def parts_line(parts: list[Job]) -> str:
    """ "3 of 6 parts done: #4 ✅ · #5 🏃 · …" — a part retried counts once, by its newest try."""
    newest = {p.run_dir: p for p in sorted(parts, key=lambda j: j.id)}
    done = sum(p.state == "succeeded" for p in newest.values())
    ids = " · ".join(f"#{p.id} {STATE_ICON.get(p.state, '')}" for p in newest.values())
    return f"{done} of {len(newest)} part{'s' * (len(newest) != 1)} done: {ids}"


def placement_line(job: Job, parts: list[Job] | None = None) -> str:
    """Where the job ran and what it is made of or part of; "" for a plain local job."""
    bits = []
    if job.node:
        bits.append(f"🌐 node {node_short(job.node)}")
    if job.group_id is not None:
        bits.append(f"part of job #{job.group_id}")
    if parts:
        bits.append(f"🧩 {parts_line(parts)}")
    return " · ".join(bits)
