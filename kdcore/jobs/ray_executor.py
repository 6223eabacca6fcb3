"""The Ray executor: queued jobs run as Ray tasks on a cluster; the job store stays on the head.

    kdcore worker --executor ray [--ray-address ADDR] [--data-dir DIR]   (python -m app --executor ray)

One dispatcher process on the head machine claims queued jobs from the store, as many as the
cluster has free slots for (one slot = `--ray-cpus` CPUs, or one GPU when the device is CUDA or
`auto` finds GPUs in the cluster), and starts each as a Ray task with that resource request. The
task runs the job exactly as a local worker does (`kdcore.jobs.worker.run_job`: progress, heartbeat,
cooperative cancel, timeouts), but its store is `_RelayStore`: every write goes through Ray to
`Relay`, an actor pinned to the head node, so only the head machine ever opens the SQLite file
(never over a network file system). Ray does not re-run a task (`max_retries=0`): each job runs
exactly once, and a retry is the user's, through `jobs retry`, as with local workers.

Run directories are written by the tasks where they run: the data directory (uploads, `runs/`,
the stage cache) must be the same path on every node, e.g. a shared mount. This is chosen over
shipping artefacts back because a retry must find the finished stages on whichever node it lands,
and a run's models and stages are large; on a one-machine cluster any local path works.

Faults: a node (or the task's worker process) that dies mid-job surfaces as a Ray error on the
task's result; the dispatcher marks the job `interrupted` with the reason, and `jobs retry` resumes
it from its finished stages. A cancel is seen by the task through the relay within a heartbeat
(and stops it as locally); if the task does not stop within `CANCEL_GRACE_S` more, the dispatcher
`ray.cancel`s it with force. If the dispatcher itself dies, Ray stops the tasks and the relay it
owns; the jobs' heartbeats go stale and `reap` marks them interrupted, as with a dead local worker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

# Ray is an optional extra (requirements-ray.txt): this module is imported only by `kdcore worker
# --executor ray` (kdcore.cli.jobs, lazily, with the install hint when Ray is missing).
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kdcore.device import resolve_device
from kdcore.errors import InputError
from kdcore.io import atomic_write_json
from kdcore.jobs.store import Job, JobStore
from kdcore.jobs.worker import CANCEL_GRACE_S, HEARTBEAT_S, POLL_S, _raise_stop, _Stop, run_job

log = logging.getLogger("kdcore.worker")

NAMESPACE = "kdaudit"
# Ray errors that mean the machine or process under the task went away (not a bug in the job)
LOST = (
    ray.exceptions.NodeDiedError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.OwnerDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.ActorDiedError,
)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Relay:
    """On the head node: writes what remote tasks report into the job store."""

    def __init__(self, data_dir: str) -> None:
        self.store = JobStore(data_dir)

    def placed(self, job_id: int, node: str, host: str, pid: int, device: str) -> None:
        self.store.placed(job_id, node, host, pid, device)

    def progress(self, job_id: int, stage: str, step: int, total: int, message: str = "") -> bool:
        return self.store.progress(job_id, stage, step, total, message)

    def set_stage_sizes(self, job_id: int, sizes: tuple) -> None:
        self.store.set_stage_sizes(job_id, sizes)

    def heartbeat(self, job_id: int) -> bool:
        return self.store.heartbeat(job_id)

    def finish(self, job_id: int, state: str, error: str = "") -> None:
        self.store.finish(job_id, state, error)


class _RelayStore:
    """The part of `JobStore` a running job uses, over Ray to the relay on the head."""

    def __init__(self, relay) -> None:
        self.relay = relay

    def progress(self, job_id: int, stage: str, step: int, total: int, message: str = "") -> bool:
        return ray.get(self.relay.progress.remote(job_id, stage, step, total, message))

    def set_stage_sizes(self, job_id: int, sizes: tuple) -> None:
        ray.get(self.relay.set_stage_sizes.remote(job_id, sizes))

    def heartbeat(self, job_id: int) -> bool:
        return ray.get(self.relay.heartbeat.remote(job_id))

    def finish(self, job_id: int, state: str, error: str = "") -> None:
        ray.get(self.relay.finish.remote(job_id, state, error))


def node_label(node_id: str) -> str:
    """How the store and the Jobs page name a Ray node: its address and id, plus its custom
    resources (a cluster's way of naming nodes, e.g. `gpu_a100` or `node_b`)."""
    return _label(next((n for n in ray.nodes() if n["NodeID"] == node_id), {"NodeID": node_id}))


def _label(info: dict) -> str:
    """`node_label` of one entry of `ray.nodes()`."""
    custom = sorted(k for k in info.get("Resources", {}) if k not in _STANDARD and not k.startswith("node:"))
    return " ".join([info.get("NodeManagerAddress", "?"), info["NodeID"][:12], *custom])


_STANDARD = {"CPU", "GPU", "memory", "object_store_memory", "accelerator_type", "TPU"}


@ray.remote(max_retries=0)
def _run_remote(relay, job: Job, device: str) -> str:
    dev = str(resolve_device(device))  # under num_gpus=1 Ray sets CUDA_VISIBLE_DEVICES: cuda is cuda:0
    node = ray.get_runtime_context().get_node_id()
    ray.get(relay.placed.remote(job.id, node_label(node), socket.gethostname(), os.getpid(), dev))
    return run_job(_RelayStore(relay), job, dev)


@dataclass
class _Running:
    job: Job
    ref: object
    cancel_seen: float | None = None
    forced: bool = False


def cluster_slots(cpus: float, gpus: bool, custom: dict[str, float] | None = None) -> int:
    """Jobs the live nodes can run at once: per node, its GPUs or its CPUs // `cpus`, and no more
    than each `custom` resource a job asks for allows."""
    total = 0
    for n in ray.nodes():
        if n.get("Alive"):
            r = n.get("Resources", {})
            fits = [int(r.get("GPU", 0)) if gpus else int(r.get("CPU", 0) // cpus)]
            fits += [int(r.get(k, 0) // v) for k, v in (custom or {}).items()]
            total += min(fits)
    return total


def cluster_resources() -> dict:
    """The cluster's free and total resources, for the Jobs page (written by the dispatcher)."""
    nodes = [{"node": _label(n), "resources": n.get("Resources", {})} for n in ray.nodes() if n.get("Alive")]
    return {
        "available": ray.available_resources(),
        "total": ray.cluster_resources(),
        "nodes": nodes,
        "at": time.time(),
    }


def work_ray(
    store: JobStore,
    address: str | None = None,
    device: str = "auto",
    cpus: float = 1.0,
    once: bool = False,
    idle_exit_s: float | None = None,
    custom: dict[str, float] | None = None,
) -> int:
    """The dispatcher loop. Returns the number of jobs that ended. `custom`: resources every job
    asks for besides CPUs/GPU (`--ray-resource NAME=AMOUNT`), which keeps jobs on the nodes that
    have them (e.g. a node started with `ray start --resources '{"audit": 4}'`)."""
    if cpus <= 0:
        raise InputError(f"--ray-cpus must be > 0; got {cpus}")
    custom = dict(custom or {})
    env = {k: v for k, v in os.environ.items() if k.startswith("KDAUDIT_")}
    ray.init(
        address=address or "local",  # None would join the machine's last cluster; no address starts one
        namespace=NAMESPACE,
        runtime_env={"env_vars": env} if env else None,
        log_to_driver=False,
        configure_logging=False,
    )
    head = ray.get_runtime_context().get_node_id()
    relay = Relay.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote(
        str(store.data_dir)
    )
    gpus = device.startswith("cuda") or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    asks = {"num_cpus": cpus, "resources": custom, **({"num_gpus": 1} if gpus else {})}
    task = _run_remote.options(**asks)
    task_device = "cuda" if gpus else "cpu"
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_stop)
    for orphan in store.reap():
        log.warning("job %s was orphaned by a previous crash: %s", orphan.id, orphan.error)
    running: dict[object, _Running] = {}
    ended, idle_since, last_beat, last_status = 0, time.monotonic(), 0.0, 0.0
    status_path = store.data_dir / "ray-cluster.json"
    try:
        while True:
            now = time.monotonic()
            if now - last_status > 5 * HEARTBEAT_S:
                _write_status(status_path, address)
                last_status = now
            free = cluster_slots(cpus, gpus, custom) - len(running)
            while free > 0 and not (once and (ended or running)):
                job = store.claim(f"ray:{task_device}", os.getpid())
                if job is None:
                    break
                log.info("dispatching job %s (%s) to the Ray cluster", job.id, job.kind)
                ref = task.remote(relay, job, task_device)
                running[ref] = _Running(job, ref)
                free -= 1
            if not running:
                if once and ended:
                    return ended
                if once or (idle_exit_s is not None and now - idle_since > idle_exit_s):
                    return ended
                time.sleep(POLL_S)
                store.reap()
                continue
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in done:
                r = running.pop(ref)
                _settle(store, r)
                ended += 1
                idle_since = time.monotonic()
            if time.monotonic() - last_beat > HEARTBEAT_S:
                last_beat = time.monotonic()
                _watch(store, running)
    except (_Stop, KeyboardInterrupt):
        for r in running.values():
            ray.cancel(r.ref, force=True)
            store.finish(r.job.id, "interrupted", "the Ray dispatcher was stopped; `jobs retry` resumes it")
        return ended
    finally:
        status_path.unlink(missing_ok=True)


def _settle(store: JobStore, r: _Running) -> None:
    """A task ended: its job is already terminal unless the task died under it."""
    try:
        state = ray.get(r.ref)
        log.info("job %s ended %s", r.job.id, state)
        return
    except ray.exceptions.TaskCancelledError:
        state, error = "cancelled", "cancelled (the Ray task was stopped)"
    except LOST as e:
        node = store.get(r.job.id).node or "its node"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        state, error = (
            "interrupted",
            (
                f"the Ray node running it ({node}) or its worker process was lost: {type(e).__name__}"
                f"{': ' + first[:300] if first else ''}; `jobs retry` resumes it from its finished stages"
            ),
        )
    except Exception as e:  # the task itself raised outside run_job (e.g. the relay was unreachable)
        state, error = "failed", f"the Ray task failed: {type(e).__name__}: {e}"
    log.warning("job %s: %s", r.job.id, error)
    store.finish(r.job.id, state, error)


def _watch(store: JobStore, running: dict[object, _Running]) -> None:
    """Every heartbeat: keep jobs whose task has not started yet alive in the store, and force-stop
    a task that ignores a cancel for CANCEL_GRACE_S after its own grace (the task's heartbeat thread
    interrupts it first)."""
    now = time.monotonic()
    for r in running.values():
        job = store.get(r.job.id)
        if not job.node:
            store.heartbeat(job.id)
        if job.cancel_requested and not r.forced:
            r.cancel_seen = r.cancel_seen or now
            if now - r.cancel_seen > 2 * CANCEL_GRACE_S + HEARTBEAT_S:
                r.forced = True
                ray.cancel(r.ref, force=True)


def _write_status(path, address: str | None) -> None:
    try:
        atomic_write_json(path, {"address": address or "local", **cluster_resources()})
    except Exception:  # the Jobs page's panel is a convenience; never stop dispatching for it
        log.exception("could not write the cluster status")
