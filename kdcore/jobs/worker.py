"""Worker processes: claim queued jobs from the store and run them, one at a time.

Start with `python -m kdcore worker [--once] [--job ID] [--device auto|cpu|cuda[:N]]`. Each worker
is its own OS process (the dashboard starts them with subprocess, never by forking itself), so a
crash or SIGKILL takes down only that worker: the store's `reap()` later finds the job by its dead
pid or stale heartbeat and marks it `interrupted`, and `retry` resumes from finished stages.

The same entry runs one job under a cluster scheduler, e.g. Ray Jobs:
`entrypoint="python -m kdcore worker --job 42 --data-dir /shared/kdaudit-data"`.

Inside a job:
- progress goes to the store at most every `PROGRESS_EVERY_S` seconds (plus stage changes);
- a heartbeat thread writes every `HEARTBEAT_S` seconds even while a stage is silent;
- cancel is cooperative: the progress callback raises `Cancelled`; if a stage makes no callback
  for `CANCEL_GRACE_S` seconds after the request, the heartbeat thread interrupts the main thread.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

from kdcore.config import from_dict
from kdcore.device import resolve_device
from kdcore.errors import Cancelled, KDCoreError
from kdcore.jobs.store import Job, JobStore

log = logging.getLogger("kdcore.worker")

PROGRESS_EVERY_S = 0.25
HEARTBEAT_S = 2.0
CANCEL_GRACE_S = 5.0
POLL_S = 1.0


class _Stop(BaseException):
    """SIGTERM/SIGINT to the worker: the running job ends `interrupted` and can be retried."""


def _with_device(kind: str, config: dict, device: str) -> dict:
    """The worker's device replaces the one in the job's config (the worker owns its device)."""
    cfg = dict(config)
    if kind == "sweep":
        cfg["setup"] = {**cfg.get("setup", {}), "device": device}
    else:
        cfg["device"] = device
    return cfg


@dataclass
class _JobContext:
    store: JobStore
    job: Job
    last_write: float = 0.0
    last_stage: str = ""
    cancel_seen_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    interrupted_for_cancel: bool = False

    def on_progress(self, stage: str, step: int, total: int, metrics: dict) -> None:
        now = time.monotonic()
        if stage == self.last_stage and now - self.last_write < PROGRESS_EVERY_S and step < total:
            return
        self.last_write, self.last_stage = now, stage
        msg = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        if self.store.progress(self.job.id, stage, step, total, msg):
            raise Cancelled(f"job {self.job.id} was cancelled during stage '{stage}'")

    def heartbeat_loop(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            try:
                cancel = self.store.heartbeat(self.job.id)
            except Exception:  # a busy database must not kill the heartbeat; the next beat retries
                log.exception("heartbeat failed")
                continue
            if cancel:
                now = time.monotonic()
                self.cancel_seen_at = self.cancel_seen_at or now
                if now - self.cancel_seen_at > CANCEL_GRACE_S and not self.interrupted_for_cancel:
                    self.interrupted_for_cancel = True
                    _thread.interrupt_main()  # a stage that never calls back still stops


def run_job(store: JobStore, job: Job, device: str) -> str:
    """Run a claimed job to a terminal state; returns that state. Never raises for job errors."""
    from kdcore.runs import KINDS

    cls, run = KINDS[job.kind]
    ctx = _JobContext(store, job)
    beat = threading.Thread(target=ctx.heartbeat_loop, name=f"heartbeat-{job.id}", daemon=True)
    beat.start()
    state, error = "failed", ""
    try:
        cfg = from_dict(cls, _with_device(job.kind, job.config, device))
        run(cfg, job.run_dir, ctx.on_progress)
        state = "succeeded"
    except Cancelled as e:
        state, error = "cancelled", f"{e}; finished stages are kept in {job.run_dir}/stages"
    except KeyboardInterrupt:
        if ctx.interrupted_for_cancel:
            state, error = "cancelled", f"cancelled (interrupted after {CANCEL_GRACE_S:.0f} s without a callback)"
        else:
            state, error = "interrupted", "the worker was interrupted; `jobs retry` resumes from finished stages"
    except _Stop:
        state, error = "interrupted", "the worker was stopped; `jobs retry` resumes from finished stages"
    except KDCoreError as e:
        state, error = "failed", f"{type(e).__name__}: {e}"
    except Exception:  # a bug: keep the whole traceback with the job so it can be reported
        state, error = "failed", traceback.format_exc()
    finally:
        ctx.done.set()
        beat.join(timeout=HEARTBEAT_S + 1)
        store.finish(job.id, state, error)
    return state


def _raise_stop(signum, frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def work(
    store: JobStore,
    device: str = "auto",
    once: bool = False,
    job_id: int | None = None,
    idle_exit_s: float | None = None,
) -> int:
    """The worker loop. Returns the number of jobs run."""
    dev = str(resolve_device(device))
    pid = os.getpid()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_stop)
    for orphan in store.reap():
        log.warning("job %s was orphaned by a previous crash: %s", orphan.id, orphan.error)
    ran, idle_since = 0, time.monotonic()
    try:
        while True:
            job = store.claim(dev, pid, job_id)
            if job is None:
                if (
                    job_id is not None
                    or once
                    or (idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s)
                ):
                    return ran
                time.sleep(POLL_S)
                store.reap()
                continue
            log.info("worker %s: running job %s (%s) on %s", pid, job.id, job.kind, dev)
            run_job(store, job, dev)
            ran += 1
            idle_since = time.monotonic()
            if once or job_id is not None:
                return ran
    except _Stop:
        return ran
