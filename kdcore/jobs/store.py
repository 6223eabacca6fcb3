"""The job store: one SQLite database (WAL mode) in the data directory, one row per job, and the
jobs' life cycle (submit, claim, progress, finish, cancel, retry, reap) over it.

The job row and its states are `kdcore.jobs.job`'s, fan-out groups `kdcore.jobs.groups`', the
connection `kdcore.jobs.db`'s; reviewers' verdicts (`kdcore.jobs.review`), shares (`kdcore.jobs.owners`),
the access trail (`kdcore.jobs.trail`) and the uploads' quota ledger (`kdcore.jobs.quotas`) share the
database file, and opening the store creates (or migrates) all of them. Every job has an owner
(`owner`, "local" unless a user's submit names one); what one user may do is `kdcore.jobs.access`'s.

Each job records how long each of its stages took (`stage_times`, written when the stage changes
and when the job finishes). The ETA is the whole job's: the current stage's rest plus the stages
still to come, timed by the recent succeeded jobs of the same kind (`JobStore.stage_profile`) and
scaled by how fast this job's finished stages ran compared with theirs (`Job.eta`); for the first
job of a kind, its stages' sizes (`set_stage_sizes`) timed by its own measured rate.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from typing import Any

from kdcore.config import from_dict, to_dict
from kdcore.errors import ConfigError, InputError
from kdcore.jobs import owners, quotas, trail
from kdcore.jobs.db import Database
from kdcore.jobs.eta import Profile, median_profile
from kdcore.jobs.groups import READY, fan_out, group_parts, insert_group
from kdcore.jobs.job import ADDED_COLUMNS, LOCAL, SCHEMA, STATES, TERMINAL, Job, insert_job, read_times
from kdcore.jobs.owners import User
from kdcore.paths import data_home

__all__ = ["STATES", "TERMINAL", "Job", "JobStore", "validate_config"]

STALE_AFTER_S = 30.0  # a running job whose heartbeat is older than this is interrupted
PROFILE_JOBS = 5  # succeeded jobs of a kind whose stage times make its profile (median per stage)


def validate_config(kind: str, config: dict | Any) -> dict:
    """Build the typed config of `kind` (raising ConfigError/InputError) and return it as a dict."""
    # kdcore.runs imports torch and every run kind (≈1.7 s against 0.03 s for this module): only a
    # submit pays for it, not a light client of the store (the CLI's `jobs list`, the dashboard's reads).
    from kdcore.runs import KINDS

    if kind not in KINDS:
        raise ConfigError(f"Unknown job kind {kind!r}; expected one of {sorted(KINDS)}")
    cls = KINDS[kind][0]
    cfg = config if isinstance(config, cls) else from_dict(cls, dict(config or {}))
    check = getattr(cfg, "check_inputs", None)
    if check is not None:
        check()
    return to_dict(cfg)


class JobStore(Database):
    """The jobs' database in `data_dir` (default: `kdcore.paths.data_home`), runs under `data_dir/runs`."""

    def __init__(self, data_dir: str | os.PathLike | None = None):
        self.data_dir = data_home(data_dir).resolve()
        self.runs_dir = self.data_dir / "runs"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.data_dir / "jobs.sqlite3")
        self.ensure_schema(SCHEMA, "jobs", ADDED_COLUMNS)
        self.ensure_schema(owners.SCHEMA + trail.SCHEMA + quotas.SCHEMA)

    # ---- submitting and reading -------------------------------------------------------------
    def submit(
        self,
        kind: str,
        config: dict | Any,
        label: str = "",
        parent_id: int | None = None,
        run_dir: str | None = None,
        group_id: int | None = None,
        owner: str = LOCAL,
        quota: int | None = None,
    ) -> Job:
        """Validate and queue a job owned by `owner`; an invalid config raises and nothing is queued,
        and so does an owner who already has `quota` jobs queued or running (QuotaError). A new job of a
        kind that fans out (`kdcore.runs.PARTS`: a sweep of several cells) is queued as a group
        (`submit_group`) and the gathering job is returned; a retry or a part never fans out."""
        resolved = validate_config(kind, config)
        if parent_id is None and group_id is None:
            split = fan_out(kind, resolved)
            if split is not None:
                return self.submit_group(kind, split[0], split[1], label, run_dir, owner, quota)[0]
        with self.transaction(immediate=True) as c:
            if quota is not None:
                quotas.check_jobs(c, owner, quota)
            job_id = insert_job(c, self.runs_dir, kind, resolved, label, parent_id, run_dir, group_id, owner)
        return self.get(job_id)

    def submit_group(
        self,
        kind: str,
        config: dict | Any,
        parts: list[tuple[str, dict | Any, str]],
        label: str = "",
        run_dir: str | None = None,
        owner: str = LOCAL,
        quota: int | None = None,
    ) -> tuple[Job, list[Job]]:
        """Queue a fan-out: one job of `kind` that gathers, and its parts `(kind, config, run dir
        relative to the gathering job's run dir)`, in one transaction. A worker of any executor
        takes the parts in parallel; the gathering job is not claimed until every part (and every
        retry of one) has ended. Configs are validated first: nothing is queued if one is invalid, or
        when `owner` already has `quota` jobs queued or running (the group counts as one)."""
        resolved = validate_config(kind, config)
        checked = [(k, validate_config(k, cfg), rel) for k, cfg, rel in parts]
        with self.transaction(immediate=True) as c:
            if quota is not None:
                quotas.check_jobs(c, owner, quota)
            gid, ids = insert_group(c, self.runs_dir, kind, resolved, checked, label, run_dir, owner)
        return self.get(gid), [self.get(i) for i in ids]

    def group(self, group_id: int) -> list[Job]:
        """The parts of a fan-out job (retries included), oldest first."""
        with self.transaction() as c:
            return group_parts(c, group_id)

    def get(self, job_id: int) -> Job:
        with self.transaction() as c:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise InputError(f"No job {job_id} in {self.path}")
        return Job.from_row(row)

    def list(self, states: tuple[str, ...] | None = None, limit: int = 500, user: User | None = None) -> list[Job]:
        """The newest jobs (in `states`), every one, or only those `user` may see."""
        where, args = owners.visible(user) if user is not None else ("1", ())
        q, args = f"SELECT * FROM jobs WHERE {where}", list(args)
        if states:
            q += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        with self.transaction() as c:
            rows = c.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    # ---- the worker's side -----------------------------------------------------------------
    def claim(self, device: str, pid: int, job_id: int | None = None) -> Job | None:
        """Atomically take the oldest queued job (or `job_id`). A CUDA device runs one job at a time."""
        now = time.time()
        with self.transaction(immediate=True) as c:
            if device.startswith("cuda"):
                busy = c.execute("SELECT 1 FROM jobs WHERE state='running' AND device=?", (device,)).fetchone()
                if busy:
                    return None
            if job_id is None:  # READY: a fan-out job waits for its parts
                row = c.execute(f"SELECT id FROM jobs WHERE {READY} ORDER BY id LIMIT 1").fetchone()
            else:
                row = c.execute(f"SELECT id FROM jobs WHERE {READY} AND id=?", (job_id,)).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE jobs SET state='running', started_at=?, heartbeat_at=?, stage_started_at=?, device=?, "
                "worker_pid=?, worker_host=?, stage='starting', step=0, total=0, message='', stage_times='[]' "
                "WHERE id=? AND state='queued'",
                (now, now, now, device, pid, socket.gethostname(), row["id"]),
            )
        return self.get(row["id"])

    def placed(self, job_id: int, node: str, host: str, pid: int, device: str) -> None:
        """Where a running job actually runs, when an executor starts it elsewhere than it was claimed
        (a Ray task on some node): the Jobs page shows it and `reap` checks that pid on that host."""
        with self.transaction(immediate=True) as c:
            c.execute(
                "UPDATE jobs SET node=?, worker_host=?, worker_pid=?, device=?, heartbeat_at=? "
                "WHERE id=? AND state='running'",
                (node, host, int(pid), device, time.time(), job_id),
            )

    def progress(self, job_id: int, stage: str, step: int, total: int, message: str = "") -> bool:
        """Record progress and heartbeat (and, when the stage changes, how long the last one took);
        returns True when a cancel was requested."""
        now = time.time()
        with self.transaction(immediate=True) as c:
            times = _closed_stage(c, job_id, now, unless=stage)
            c.execute(
                "UPDATE jobs SET stage_started_at = CASE WHEN stage = ? THEN stage_started_at ELSE ? END, "
                "stage_times = COALESCE(?, stage_times), "
                "stage=?, step=?, total=?, message=?, heartbeat_at=? WHERE id=? AND state='running'",
                (stage, now, times, stage, int(step), int(total), message[:500], now, job_id),
            )
            row = c.execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(row and row[0])

    def set_stage_sizes(self, job_id: int, sizes: Profile) -> None:
        """Record the work each stage of a running job will do (`kdcore.runs.sizes`): its ETA goes by
        them while no earlier job of its kind has timed its stages."""
        with self.transaction(immediate=True) as c:
            c.execute(
                "UPDATE jobs SET stage_sizes=? WHERE id=? AND state='running'",
                (json.dumps([[n, float(u)] for n, u in sizes]), job_id),
            )

    def heartbeat(self, job_id: int) -> bool:
        with self.transaction() as c:
            c.execute("UPDATE jobs SET heartbeat_at=? WHERE id=? AND state='running'", (time.time(), job_id))
            row = c.execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(row and row[0])

    def finish(self, job_id: int, state: str, error: str = "") -> None:
        if state not in TERMINAL:
            raise ValueError(f"finish() needs a terminal state, got {state!r}")
        now = time.time()
        with self.transaction(immediate=True) as c:
            times = _closed_stage(c, job_id, now)
            c.execute(
                "UPDATE jobs SET state=?, error=?, finished_at=?, heartbeat_at=?, "
                "stage_times = COALESCE(?, stage_times) WHERE id=? AND state='running'",
                (state, error[:4000], now, now, times, job_id),
            )

    # ---- user actions ------------------------------------------------------------------------
    def cancel(self, job_id: int) -> Job:
        """Queued → cancelled at once; running → flagged, the worker stops it within seconds."""
        with self.transaction(immediate=True) as c:
            row = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise InputError(f"No job {job_id}")
            if row["state"] == "queued":
                c.execute(
                    "UPDATE jobs SET state='cancelled', finished_at=?, error='cancelled before it started' WHERE id=?",
                    (time.time(), job_id),
                )
            elif row["state"] == "running":
                c.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
            else:
                raise InputError(f"Job {job_id} is {row['state']}; only queued or running jobs can be cancelled")
        return self.get(job_id)

    def retry(self, job_id: int, quota: int | None = None) -> Job:
        """Queue a failed/cancelled/interrupted job again as a new job in the same run directory,
        so finished stages are reused. It stays its owner's (within their `quota`) and shared as it was."""
        old = self.get(job_id)
        if old.state not in ("failed", "cancelled", "interrupted"):
            raise InputError(f"Job {job_id} is {old.state}; only failed, cancelled or interrupted jobs can be retried")
        new = self.submit(
            old.kind,
            old.config,
            label=old.label,
            parent_id=old.id,
            run_dir=old.run_dir,
            group_id=old.group_id,
            owner=old.owner,
            quota=quota,
        )
        with self.transaction(immediate=True) as c:
            owners.copy_shares(c, old.id, new.id)
        return new

    def stage_profile(self, kind: str, jobs: int = PROFILE_JOBS) -> Profile:
        """The expected duration of each stage of a `kind` job, in run order: the median over the
        last `jobs` succeeded jobs of that kind that recorded stage times; () when there are none."""
        with self.transaction() as c:
            rows = c.execute(
                "SELECT stage_times FROM jobs WHERE kind=? AND state='succeeded' AND stage_times != '[]' "
                "ORDER BY id DESC LIMIT ?",
                (kind, int(jobs)),
            ).fetchall()
        return median_profile(read_times(r[0]) for r in rows)

    def eta(self, job: Job, now: float | None = None) -> float | None:
        """The whole job's seconds left (`Job.eta` with its kind's `stage_profile`)."""
        if job.state != "running":
            return None
        return job.eta(now, self.stage_profile(job.kind))

    def reap(self, stale_after: float = STALE_AFTER_S) -> list[Job]:
        """Mark running jobs whose worker died (dead pid on this host, or a stale heartbeat) as
        interrupted, with the reason. Returns the jobs it marked."""
        now, host, marked = time.time(), socket.gethostname(), []
        with self.transaction(immediate=True) as c:
            for r in c.execute("SELECT * FROM jobs WHERE state='running'").fetchall():
                reason = ""
                if r["worker_host"] == host and r["worker_pid"] and not _pid_alive(r["worker_pid"]):
                    reason = f"worker process {r['worker_pid']} died while running stage '{r['stage']}'"
                elif r["heartbeat_at"] is not None and now - r["heartbeat_at"] > stale_after:
                    reason = (
                        f"no heartbeat for {now - r['heartbeat_at']:.0f} s from worker "
                        f"{r['worker_host']}:{r['worker_pid']} (stage '{r['stage']}')"
                    )
                if reason:
                    c.execute(
                        "UPDATE jobs SET state='interrupted', error=?, finished_at=? WHERE id=? AND state='running'",
                        (reason + "; `jobs retry` resumes it from its finished stages", now, r["id"]),
                    )
                    marked.append(r["id"])
        return [self.get(i) for i in marked]


def _closed_stage(c: sqlite3.Connection, job_id: int, now: float, unless: str | None = None) -> str | None:
    """The job's stage_times JSON with its current stage closed at `now`; None (nothing to record)
    when the job is not running, its stage has no start time, or its stage is still `unless`."""
    row = c.execute(
        "SELECT stage, stage_started_at, stage_times FROM jobs WHERE id=? AND state='running'", (job_id,)
    ).fetchone()
    if row is None or row["stage_started_at"] is None or row["stage"] == unless:
        return None
    times = json.loads(row["stage_times"] or "[]")
    times.append([row["stage"], round(now - row["stage_started_at"], 3)])
    return json.dumps(times)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) still answers kill(0): look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
