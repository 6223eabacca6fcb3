"""Each user's quotas on a shared server: jobs queued or running, and bytes of uploads kept.

Both are checked inside the write transaction that would take the room (`BEGIN IMMEDIATE`), before
anything is stored or queued, so two submits at once cannot both slip under a limit and a refusal
leaves the queue and the data directory as they were. The limits are `kdcore.limits`' quota_*.

Uploads are stored once by content (`uploads/<hash>/<name>`), but each user who uploads a file is
charged for it once, in the `uploads` table: one user's uploads never count against another's.
"""

from __future__ import annotations

import sqlite3
import time

from kdcore.errors import QuotaError

SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    owner TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    PRIMARY KEY (owner, path)
);
"""

# A fan-out (its gathering job and its parts) is one submit, so it counts once: its gathering job.
ACTIVE = "state IN ('queued', 'running') AND group_id IS NULL"


def active_jobs(c: sqlite3.Connection, owner: str) -> int:
    return int(c.execute(f"SELECT COUNT(*) FROM jobs WHERE owner=? AND {ACTIVE}", (owner,)).fetchone()[0])


def check_jobs(c: sqlite3.Connection, owner: str, limit: int) -> None:
    n = active_jobs(c, owner)
    if n >= limit:
        raise QuotaError(
            f"You have {n} jobs queued or running, the most one user may have at once ({limit}); nothing was "
            "queued. Wait for one to finish, or cancel one on the Jobs page, then submit again."
        )


def upload_bytes(c: sqlite3.Connection, owner: str) -> int:
    return int(c.execute("SELECT COALESCE(SUM(bytes), 0) FROM uploads WHERE owner=?", (owner,)).fetchone()[0])


def size_in_words(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


def charge_upload(c: sqlite3.Connection, owner: str, path: str, nbytes: int, limit: int) -> bool:
    """Charge `owner` for keeping the upload at `path` (once per path); True when newly charged.
    Raises QuotaError, charging nothing, when it would take them over `limit` bytes."""
    if c.execute("SELECT 1 FROM uploads WHERE owner=? AND path=?", (owner, path)).fetchone():
        return False
    used = upload_bytes(c, owner)
    if used + nbytes > limit:
        after, quota = size_in_words(used + nbytes), size_in_words(limit)
        raise QuotaError(
            f"This upload ({size_in_words(nbytes)}) would bring your stored uploads to {after}, above your quota "
            f"of {quota}; it was not stored. Ask the server's admin to raise your upload quota."
        )
    c.execute("INSERT INTO uploads VALUES (?, ?, ?, ?)", (owner, path, int(nbytes), time.time()))
    return True


def release_upload(c: sqlite3.Connection, owner: str, path: str) -> None:
    """Undo a charge whose file could not be written."""
    c.execute("DELETE FROM uploads WHERE owner=? AND path=?", (owner, path))
