"""The job store: one SQLite database (WAL mode) in the data directory, one row per job.

    queued ──claim──▶ running ──▶ succeeded | failed | cancelled | interrupted
       └──cancel──▶ cancelled                      interrupted/failed/cancelled ──retry──▶ new queued job

A job = a kind (`kdcore.runs.KINDS`) + its typed config (validated at submit; an invalid one is
never queued) + a run directory. Artefacts live in the run directory, not in the database.

Each job records how long each of its stages took (`stage_times`, written when the stage changes
and when the job finishes). The ETA is the whole job's: the current stage's rest plus the stages
still to come, timed by the recent succeeded jobs of the same kind (`JobStore.stage_profile`) and
scaled by how fast this job's finished stages ran compared with theirs (`Job.eta`).
Every connection is short-lived, so worker processes, CLI calls and the dashboard can all use
the store at once; SQLite's WAL lets readers proceed while a writer commits.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcore.config import from_dict, to_dict
from kdcore.errors import ConfigError, InputError
from kdcore.jobs.eta import Profile, job_eta, median_profile
from kdcore.paths import data_home

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")
STALE_AFTER_S = 30.0  # a running job whose heartbeat is older than this is interrupted
PROFILE_JOBS = 5  # succeeded jobs of a kind whose stage times make its profile (median per stage)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    stage TEXT NOT NULL DEFAULT '',
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL,
    stage_started_at REAL,
    device TEXT NOT NULL DEFAULT '',
    worker_pid INTEGER,
    worker_host TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    run_dir TEXT NOT NULL DEFAULT '',
    parent_id INTEGER REFERENCES jobs(id),
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    label TEXT NOT NULL DEFAULT '',
    stage_times TEXT NOT NULL DEFAULT '[]',
    node TEXT NOT NULL DEFAULT '',
    group_id INTEGER REFERENCES jobs(id)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
"""


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    config: dict
    state: str
    stage: str
    step: int
    total: int
    message: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    stage_started_at: float | None
    device: str
    worker_pid: int | None
    worker_host: str
    error: str
    run_dir: str
    parent_id: int | None
    cancel_requested: bool
    label: str
    stage_times: Profile = ()  # (stage, seconds) of each finished stage, in run order
    node: str = ""  # where it ran, under a cluster executor (e.g. the Ray node); "" for a local worker
    group_id: int | None = None  # the fan-out job this one is a part of (it waits for its parts)

    @property
    def report_path(self) -> Path | None:
        p = Path(self.run_dir) / "report.json"
        return p if self.run_dir and p.exists() else None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def elapsed(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or now or time.time()) - self.started_at

    def stage_eta(self, now: float | None = None) -> float | None:
        """Seconds left in the current stage, from its rate so far (None when unknown)."""
        if self.state != "running" or not self.total or not self.step or self.stage_started_at is None:
            return None
        el = (now or time.time()) - self.stage_started_at
        return el / self.step * (self.total - self.step) if self.step < self.total else 0.0

    def eta(self, now: float | None = None, profile: Profile = ()) -> float | None:
        """Seconds left in the whole job, given its kind's `profile` (`JobStore.stage_profile`; the
        formula is in `kdcore.jobs.eta`); without one, the current stage's. None when unknown."""
        if self.state != "running":
            return None
        now = now or time.time()
        in_stage = None if self.stage_started_at is None else now - self.stage_started_at
        return job_eta(self.stage, in_stage, self.stage_eta(now), self.stage_times, profile)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["report_path"] = str(self.report_path) if self.report_path else None
        return d


def validate_config(kind: str, config: dict | Any) -> dict:
    """Build the typed config of `kind` (raising ConfigError/InputError) and return it as a dict."""
    from kdcore.runs import KINDS

    if kind not in KINDS:
        raise ConfigError(f"Unknown job kind {kind!r}; expected one of {sorted(KINDS)}")
    cls = KINDS[kind][0]
    cfg = config if isinstance(config, cls) else from_dict(cls, dict(config or {}))
    check = getattr(cfg, "check_inputs", None)
    if check is not None:
        check()
    return to_dict(cfg)


class JobStore:
    def __init__(self, data_dir: str | os.PathLike | None = None):
        self.data_dir = data_home(data_dir).resolve()
        self.path = self.data_dir / "jobs.sqlite3"
        self.runs_dir = self.data_dir / "runs"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ensure_schema(_SCHEMA, migrate=True)

    def ensure_schema(self, script: str, migrate: bool = False) -> None:
        """Create tables (idempotent). executescript commits on its own, so it runs outside
        `transaction()`; WAL mode persists in the database file once set."""
        c = sqlite3.connect(self.path, timeout=30.0)
        try:
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(script)
            if migrate:
                _migrate(c)
        finally:
            c.close()

    @contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA busy_timeout=30000")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        finally:
            c.close()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        d = dict(row)
        d["config"] = json.loads(d["config"])
        d["cancel_requested"] = bool(d["cancel_requested"])
        d["stage_times"] = _times(d.get("stage_times"))
        return Job(**d)

    # ---- submitting and reading -------------------------------------------------------------
    def submit(
        self,
        kind: str,
        config: dict | Any,
        label: str = "",
        parent_id: int | None = None,
        run_dir: str | None = None,
        group_id: int | None = None,
    ) -> Job:
        """Validate and queue a job; an invalid config raises and nothing is queued. A new job of a
        kind that fans out (`kdcore.runs.PARTS`: a sweep of several cells) is queued as a group
        (`submit_group`) and the gathering job is returned; a retry or a part never fans out."""
        resolved = validate_config(kind, config)
        if parent_id is None and group_id is None:
            split = _fan_out(kind, resolved)
            if split is not None:
                return self.submit_group(kind, split[0], split[1], label=label, run_dir=run_dir)[0]
        with self.transaction(immediate=True) as c:
            job_id = _insert(c, self.runs_dir, kind, resolved, label, parent_id, run_dir, group_id)
        return self.get(job_id)

    def submit_group(
        self,
        kind: str,
        config: dict | Any,
        parts: list[tuple[str, dict | Any, str]],
        label: str = "",
        run_dir: str | None = None,
    ) -> tuple[Job, list[Job]]:
        """Queue a fan-out: one job of `kind` that gathers, and its parts `(kind, config, run dir
        relative to the gathering job's run dir)`, in one transaction. A worker of any executor
        takes the parts in parallel; the gathering job is not claimed until every part (and every
        retry of one) has ended. Configs are validated first: nothing is queued if one is invalid."""
        resolved = validate_config(kind, config)
        checked = [(k, validate_config(k, cfg), rel) for k, cfg, rel in parts]
        with self.transaction(immediate=True) as c:
            gid = _insert(c, self.runs_dir, kind, resolved, label, None, run_dir, None)
            root = Path(c.execute("SELECT run_dir FROM jobs WHERE id=?", (gid,)).fetchone()[0])
            ids = [
                _insert(c, self.runs_dir, k, cfg, _part_label(label, rel), None, str(root / rel), gid)
                for k, cfg, rel in checked
            ]
        return self.get(gid), [self.get(i) for i in ids]

    def group(self, group_id: int) -> list[Job]:
        """The parts of a fan-out job (retries included), oldest first."""
        with self.transaction() as c:
            rows = c.execute("SELECT * FROM jobs WHERE group_id=? ORDER BY id", (int(group_id),)).fetchall()
        return [self._job(r) for r in rows]

    def get(self, job_id: int) -> Job:
        with self.transaction() as c:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise InputError(f"No job {job_id} in {self.path}")
        return self._job(row)

    def list(self, states: tuple[str, ...] | None = None, limit: int = 500) -> list[Job]:
        q, args = "SELECT * FROM jobs", []
        if states:
            q += f" WHERE state IN ({','.join('?' * len(states))})"
            args = list(states)
        with self.transaction() as c:
            rows = c.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._job(r) for r in rows]

    # ---- the worker's side -----------------------------------------------------------------
    def claim(self, device: str, pid: int, job_id: int | None = None) -> Job | None:
        """Atomically take the oldest queued job (or `job_id`). A CUDA device runs one job at a time."""
        now = time.time()
        with self.transaction(immediate=True) as c:
            if device.startswith("cuda"):
                busy = c.execute("SELECT 1 FROM jobs WHERE state='running' AND device=?", (device,)).fetchone()
                if busy:
                    return None
            # a fan-out job waits for its parts (those of a job it retries too: a retry keeps the run dir)
            ready = (
                "state='queued' AND NOT EXISTS (SELECT 1 FROM jobs p JOIN jobs g ON p.group_id = g.id "
                f"WHERE g.run_dir = jobs.run_dir AND p.state NOT IN {TERMINAL!r})"
            )
            if job_id is None:
                row = c.execute(f"SELECT id FROM jobs WHERE {ready} ORDER BY id LIMIT 1").fetchone()
            else:
                row = c.execute(f"SELECT id FROM jobs WHERE {ready} AND id=?", (job_id,)).fetchone()
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

    def retry(self, job_id: int) -> Job:
        """Queue a failed/cancelled/interrupted job again as a new job in the same run directory,
        so finished stages are reused."""
        old = self.get(job_id)
        if old.state not in ("failed", "cancelled", "interrupted"):
            raise InputError(f"Job {job_id} is {old.state}; only failed, cancelled or interrupted jobs can be retried")
        return self.submit(
            old.kind, old.config, label=old.label, parent_id=old.id, run_dir=old.run_dir, group_id=old.group_id
        )

    def stage_profile(self, kind: str, jobs: int = PROFILE_JOBS) -> Profile:
        """The expected duration of each stage of a `kind` job, in run order: the median over the
        last `jobs` succeeded jobs of that kind that recorded stage times; () when there are none."""
        with self.transaction() as c:
            rows = c.execute(
                "SELECT stage_times FROM jobs WHERE kind=? AND state='succeeded' AND stage_times != '[]' "
                "ORDER BY id DESC LIMIT ?",
                (kind, int(jobs)),
            ).fetchall()
        return median_profile(_times(r[0]) for r in rows)

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


# Columns added after the first release: (name, SQL type with default). Older stores get them on open.
_ADDED_COLUMNS = (
    ("stage_started_at", "REAL"),
    ("stage_times", "TEXT NOT NULL DEFAULT '[]'"),
    ("node", "TEXT NOT NULL DEFAULT ''"),
    ("group_id", "INTEGER REFERENCES jobs(id)"),
)


def _part_label(label: str, rel: str) -> str:
    return f"{label} · part {Path(rel).name}" if label else f"part {Path(rel).name}"


def _fan_out(kind: str, resolved: dict) -> tuple[Any, list] | None:
    from kdcore.runs import KINDS, PARTS

    if kind not in PARTS:
        return None
    return PARTS[kind](from_dict(KINDS[kind][0], resolved))


def _insert(
    c: sqlite3.Connection,
    runs_dir: Path,
    kind: str,
    resolved: dict,
    label: str,
    parent_id: int | None,
    run_dir: str | None,
    group_id: int | None,
) -> int:
    cur = c.execute(
        "INSERT INTO jobs (kind, config, created_at, label, parent_id, group_id) VALUES (?, ?, ?, ?, ?, ?)",
        (kind, json.dumps(resolved), time.time(), label, parent_id, group_id),
    )
    job_id = int(cur.lastrowid)
    rd = run_dir or str(runs_dir / f"job-{job_id:05d}-{kind}")
    c.execute("UPDATE jobs SET run_dir = ? WHERE id = ?", (rd, job_id))
    return job_id


def _times(text: str | None) -> Profile:
    return tuple((str(n), float(t)) for n, t in json.loads(text or "[]"))


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


def _migrate(c: sqlite3.Connection) -> None:
    have = {r[1] for r in c.execute("PRAGMA table_info(jobs)")}
    for name, decl in _ADDED_COLUMNS:
        if name not in have:
            c.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
    c.commit()


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
