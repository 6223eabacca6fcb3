"""The access trail: who opened, downloaded, shared, reviewed, cancelled or retried which job, and when.

One append-only table in the job store's database file. Rows are only ever inserted: two triggers
make SQLite itself refuse any UPDATE or DELETE, from this code or any other client of the file, so a
user of the dashboard cannot rewrite it (the server's own account, which owns the file, could drop
the triggers; the trail guards against the users of a server, not against its administrator).
A refused attempt is kept too (`refused`, with what was tried), so an admin sees who knocked.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from dataclasses import dataclass

ACTIONS = (
    "opened",
    "downloaded",
    "shared",
    "unshared",
    "reviewed",
    "cancelled",
    "retried",
    "reopened",
    "refused",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS access_trail (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    subject TEXT NOT NULL,
    action TEXT NOT NULL,
    job_id INTEGER,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS access_trail_no_update BEFORE UPDATE ON access_trail
BEGIN SELECT RAISE(ABORT, 'the access trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS access_trail_no_delete BEFORE DELETE ON access_trail
BEGIN SELECT RAISE(ABORT, 'the access trail is append-only'); END;
"""

COLUMNS = ("id", "when_utc", "user", "action", "job", "detail")


@dataclass(frozen=True)
class Entry:
    id: int
    at: float  # seconds since the epoch
    subject: str
    action: str
    job_id: int | None
    detail: str


def append(c: sqlite3.Connection, subject: str, action: str, job_id: int | None, detail: str = "") -> None:
    if action not in ACTIONS:
        raise ValueError(f"Unknown trail action {action!r}; expected one of {ACTIONS}")
    c.execute(
        "INSERT INTO access_trail (at, subject, action, job_id, detail) VALUES (?, ?, ?, ?, ?)",
        (time.time(), subject, action, job_id, detail[:500]),
    )


def entries(c: sqlite3.Connection, job_id: int | None = None, limit: int = 10_000) -> list[Entry]:
    """The newest `limit` entries (of one job, or all), newest first."""
    q, args = "SELECT id, at, subject, action, job_id, detail FROM access_trail", ()
    if job_id is not None:
        q, args = q + " WHERE job_id = ?", (int(job_id),)
    rows = c.execute(q + " ORDER BY id DESC LIMIT ?", (*args, int(limit))).fetchall()
    return [Entry(*r) for r in rows]


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def to_csv(rows: list[Entry]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for e in rows:
        w.writerow([e.id, utc(e.at), e.subject, e.action, "" if e.job_id is None else e.job_id, e.detail])
    return buf.getvalue()
