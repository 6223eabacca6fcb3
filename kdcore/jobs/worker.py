"""Worker processes: claim queued jobs from the store and run them, one at a time.

Start with `python -m kdcore worker [--once] [--job ID] [--device auto|cpu|cuda[:N]]`. Each worker
is its own OS process (the dashboard starts them with subprocess, never by forking itself), so a
crash or SIGKILL takes down only that worker: the store's `reap()` later finds the job by its dead
pid or stale heartbeat and marks it `interrupted`, and `retry` resumes from finished stages.

The same entry runs one job under a cluster scheduler, e.g. Ray Jobs:
`entrypoint="python -m kdcore worker --job 42 --data-dir /shared/kdaudit-data"`.

Inside a job:
- progress goes to the store at most every `PROGRESS_EVERY_S` seconds (plus stage changes);
- how the job ended (state, and why) goes to <run_dir>/outcome.json, for a fan-out's gathering job;
- each stage change goes to the job's log (<run_dir>/log.txt, the Jobs page's log): the stage that
  ended, with its time, and the one that began;
- the stage sizes (`kdcore.runs.sizes`) go to the store once known: a kind's first job's ETA goes by them;
- a heartbeat thread writes every `HEARTBEAT_S` seconds even while a stage is silent;
- cancel is cooperative: the progress callback raises `Cancelled`; if a stage makes no callback
  for `CANCEL_GRACE_S` seconds after the request, the heartbeat thread interrupts the main thread;
- a job that runs longer than its kind's timeout (`job_timeout_<kind>_s` in `kdcore.limits`:
  demo 1 h, audit 6 h, sweep 24 h, defend 3 h, refine 1 h, audit_many 24 h; `kdcore --limit NAME=SECONDS worker`
  or KDAUDIT_LIMIT_JOB_TIMEOUT_<KIND>_S) is stopped the same two ways and ends `failed` with the
  reason. Finished stages stay in the run directory, so `jobs retry` resumes from them.
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
from pathlib import Path

from kdcore import limits
from kdcore.config import from_dict
from kdcore.device import resolve_device
from kdcore.errors import Cancelled, KDCoreError
from kdcore.jobs.store import Job, JobStore
from kdcore.runs import KINDS
from kdcore.runs.common import run_logging, write_outcome
from kdcore.runs.sizes import stage_sizes

log = logging.getLogger("kdcore.worker")

PROGRESS_EVERY_S = 0.25
HEARTBEAT_S = 2.0
CANCEL_GRACE_S = 5.0
POLL_S = 1.0


class _TimedOut(KDCoreError):
    """The job ran past its kind's timeout (raised from the progress callback)."""


def job_timeout_s(kind: str) -> float:
    """The wall-clock seconds a job of `kind` may run (`job_timeout_<kind>_s` in kdcore.limits)."""
    return float(getattr(limits.current(), f"job_timeout_{kind}_s"))


def _timeout_reason(kind: str, timeout: float, elapsed: float) -> str:
    name = f"job_timeout_{kind}_s"
    return (
        f"stopped after {elapsed:.0f} s: the job timeout for {kind} is {timeout:.0f} s; raise it with "
        f"`kdcore --limit {name}=SECONDS worker` (or {limits.ENV_PREFIX}{name.upper()}) and retry: "
        "`jobs retry` resumes from the finished stages"
    )


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
    started: float = field(default_factory=time.monotonic)
    timeout_s: float = float("inf")
    interrupted_for_timeout: bool = False
    sized: bool = False  # the job's stage sizes are known and recorded (kdcore.runs.sizes)
    logged_stage: str = "starting"  # the stage the job's log last said began ('starting': the claim)
    stage_entered: float = field(default_factory=time.monotonic)

    def past_deadline(self, now: float, grace: float = 0.0) -> bool:
        return now - self.started > self.timeout_s + grace

    def on_progress(self, stage: str, step: int, total: int, metrics: dict) -> None:
        now = time.monotonic()
        if self.past_deadline(now):
            raise _TimedOut(_timeout_reason(self.job.kind, self.timeout_s, now - self.started))
        if stage != self.logged_stage:
            self.log_stage(stage, now)
        if not self.sized:
            self.size_stages(metrics)
        if stage == self.last_stage and now - self.last_write < PROGRESS_EVERY_S and step < total:
            return
        self.last_write, self.last_stage = now, stage
        msg = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        if self.store.progress(self.job.id, stage, step, total, msg):
            raise Cancelled(f"job {self.job.id} was cancelled during stage '{stage}'")

    def log_stage(self, stage: str, now: float) -> None:
        """Say in the job's log that its stage changed: the one that ended, with its time, and the new
        one. Every stage any run kind, pipeline step or verdict piece reports through `on_progress`
        is named here, so no module logs its own start."""
        log.info("job %s: stage %s ended after %.1f s", self.job.id, self.logged_stage, now - self.stage_entered)
        log.info("job %s: stage %s started", self.job.id, stage)
        self.logged_stage, self.stage_entered = stage, now

    def size_stages(self, reported: dict) -> None:
        """Record the stage sizes once they are known (a demo's from its config; an audit's when its
        'prepare' reports its set sizes): the first job of a kind has a whole-job ETA by them."""
        sizes = stage_sizes(self.job.kind, self.job.config, reported)
        if sizes is not None:
            self.sized = True
            if sizes:
                self.store.set_stage_sizes(self.job.id, sizes)

    def log_end(self, state: str) -> None:
        """The last stage's end, with its time and how the job ended."""
        took = time.monotonic() - self.stage_entered
        log.info("job %s: stage %s ended after %.1f s; the job %s", self.job.id, self.logged_stage, took, state)

    def heartbeat_loop(self) -> None:
        while not self.done.wait(min(HEARTBEAT_S, max(0.05, self.timeout_s / 4))):
            if self.past_deadline(time.monotonic(), CANCEL_GRACE_S) and not self.interrupted_for_timeout:
                self.interrupted_for_timeout = True
                _thread.interrupt_main()  # a stage that never calls back still stops
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
    """Run a claimed job to a terminal state; returns that state. Never raises for job errors.
    The job's log (<run_dir>/log.txt) gets a line when each of its stages starts and ends."""
    ctx = _JobContext(store, job, timeout_s=job_timeout_s(job.kind))
    beat = threading.Thread(target=ctx.heartbeat_loop, name=f"heartbeat-{job.id}", daemon=True)
    beat.start()
    state, error = "failed", ""
    try:
        with run_logging(Path(job.run_dir)):
            log.info("job %s (%s) on %s: stage %s", job.id, job.kind, device, ctx.logged_stage)
            state, error = _attempt(ctx, device)
            ctx.log_end(state)
            write_outcome(Path(job.run_dir), state, error)  # a fan-out's gathering job reads it (audit_many)
    except OSError as e:  # the run directory cannot be written: the job fails with the reason
        error = f"{type(e).__name__}: {e}"
    finally:
        ctx.done.set()
        beat.join(timeout=HEARTBEAT_S + 1)
        store.finish(job.id, state, error)
    return state


def _attempt(ctx: _JobContext, device: str) -> tuple[str, str]:
    """Run the job's kind; its terminal state and the reason, from how it ended."""
    job = ctx.job
    cls, run = KINDS[job.kind]
    try:
        run(from_dict(cls, _with_device(job.kind, job.config, device)), job.run_dir, ctx.on_progress)
        return "succeeded", ""
    except Cancelled as e:
        return "cancelled", f"{e}; finished stages are kept in {job.run_dir}/stages"
    except _TimedOut as e:
        return "failed", str(e)
    except KeyboardInterrupt:
        if ctx.interrupted_for_timeout:
            return "failed", _timeout_reason(job.kind, ctx.timeout_s, time.monotonic() - ctx.started)
        if ctx.interrupted_for_cancel:
            return "cancelled", f"cancelled (interrupted after {CANCEL_GRACE_S:.0f} s without a callback)"
        return "interrupted", "the worker was interrupted; `jobs retry` resumes from finished stages"
    except _Stop:
        return "interrupted", "the worker was stopped; `jobs retry` resumes from finished stages"
    except KDCoreError as e:
        return "failed", f"{type(e).__name__}: {e}"
    except Exception:  # a bug: keep the whole traceback with the job so it can be reported
        return "failed", traceback.format_exc()


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
