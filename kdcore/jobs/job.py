"""One job as the store keeps it: the `jobs` table's schema, its row as a frozen `Job`, and inserting one.

    queued ──claim──▶ running ──▶ succeeded | failed | cancelled | interrupted
       └──cancel──▶ cancelled                      interrupted/failed/cancelled ──retry──▶ new queued job

A job = a kind (`kdcore.runs.KINDS`) + its typed config (validated at submit; an invalid one is
never queued) + a run directory. Artefacts live in the run directory, not in the database. The
life cycle (claim, progress, finish, reap) is `kdcore.jobs.store.JobStore`'s.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from kdcore.jobs.eta import Profile, job_eta

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")

SCHEMA = """
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
    group_id INTEGER REFERENCES jobs(id),
    stage_sizes TEXT NOT NULL DEFAULT '[]',
    owner TEXT NOT NULL DEFAULT 'local'
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
"""

# Columns added after the first release: (name, SQL type with default). Older stores get them on open.
ADDED_COLUMNS = (
    ("stage_started_at", "REAL"),
    ("stage_times", "TEXT NOT NULL DEFAULT '[]'"),
    ("node", "TEXT NOT NULL DEFAULT ''"),
    ("group_id", "INTEGER REFERENCES jobs(id)"),
    ("stage_sizes", "TEXT NOT NULL DEFAULT '[]'"),
    ("owner", "TEXT NOT NULL DEFAULT 'local'"),  # a store from before owners: every job is the local user's
)
LOCAL = "local"  # the owner in single-user mode, of the CLI's jobs, and of every job of an older store


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
    stage_sizes: Profile = ()  # (stage, image passes) it will do, in run order (kdcore.runs.sizes)
    owner: str = LOCAL  # the subject of the user who submitted it (kdcore.jobs.owners); its run is theirs too

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        d = dict(row)
        d["config"] = json.loads(d["config"])
        d["cancel_requested"] = bool(d["cancel_requested"])
        d["stage_times"] = read_times(d.get("stage_times"))
        d["stage_sizes"] = read_times(d.get("stage_sizes"))
        return cls(**d)

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
        formula is in `kdcore.jobs.eta`); without one, from its `stage_sizes`; without those, the
        current stage's. None when unknown."""
        if self.state != "running":
            return None
        now = now or time.time()
        in_stage = None if self.stage_started_at is None else now - self.stage_started_at
        return job_eta(self.stage, in_stage, self.stage_eta(now), self.stage_times, profile, self.stage_sizes)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["report_path"] = str(self.report_path) if self.report_path else None
        return d


def read_times(text: str | None) -> Profile:
    """The (stage, number) pairs of a `stage_times` or `stage_sizes` column."""
    return tuple((str(n), float(t)) for n, t in json.loads(text or "[]"))


def insert_job(
    c: sqlite3.Connection,
    runs_dir: Path,
    kind: str,
    resolved: dict,
    label: str,
    parent_id: int | None,
    run_dir: str | None,
    group_id: int | None,
    owner: str = LOCAL,
) -> int:
    """Queue one job row (its config already validated); its run dir defaults to runs/job-NNNNN-kind."""
    cur = c.execute(
        "INSERT INTO jobs (kind, config, created_at, label, parent_id, group_id, owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (kind, json.dumps(resolved), time.time(), label, parent_id, group_id, owner),
    )
    job_id = int(cur.lastrowid)
    rd = run_dir or str(runs_dir / f"job-{job_id:05d}-{kind}")
    c.execute("UPDATE jobs SET run_dir = ? WHERE id = ?", (rd, job_id))
    return job_id
