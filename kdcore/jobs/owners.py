"""Who may do what with a job: its owner, the users it is shared with, and the admins.

    role     sees it, opens it, downloads   reviews its candidates   cancels, retries, reopens, shares
    read                 ✓
    review               ✓                           ✓
    owner                ✓                           ✓                           ✓
    admin                ✓ (every job)               ✓                           ✓

A job's owner is the subject of the user who submitted it (the OpenID Connect `sub`), "local" in
single-user mode, for the CLI and for every job of a store written before owners existed. Its run
directory, its report and what it wrote are the owner's too. An owner shares an audit with a named
user as `read` or `review`; a share of a fan-out job reaches its parts. A user who may not see a job
gets `ACCESS_REFUSED`, which says nothing of what the job holds.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from kdcore.errors import AccessError
from kdcore.jobs.job import LOCAL, Job

SHARE_ROLES = ("read", "review")
NEEDS = {"read": 1, "review": 2, "manage": 3}  # what an act needs, and the rank of each role below
RANK = {"read": 1, "review": 2, "owner": 3, "admin": 3}

ACCESS_REFUSED = "This audit belongs to someone else; ask them to share it with you."
REFUSED_FOR = {
    "review": "You may read this audit but not review it; ask its owner to share it with you for review.",
    "manage": "Only this audit's owner (or an admin) may cancel, retry, reopen or share it.",
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS shares (
    job_id INTEGER NOT NULL,
    subject TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('read', 'review')),
    granted_by TEXT NOT NULL,
    granted_at REAL NOT NULL,
    PRIMARY KEY (job_id, subject)
);
"""


@dataclass(frozen=True)
class User:
    """Who is asking: `subject` is the identity provider's stable id ("local" in single-user mode);
    `name` is for display only; an admin sees and may do everything. The empty subject is nobody
    (a visitor not signed in on a server with log-in): it owns nothing and sees nothing."""

    subject: str
    name: str = ""
    is_admin: bool = False


LOCAL_USER = User(LOCAL, "local", is_admin=True)  # single-user mode and the CLI: the admin of its own store


@dataclass(frozen=True)
class Share:
    job_id: int
    subject: str
    role: str
    granted_by: str
    granted_at: float


def role_of(c: sqlite3.Connection, user: User, job: Job) -> str | None:
    """The user's role on `job` ("admin", "owner", "review", "read"), or None when they may not see it."""
    if user.is_admin:
        return "admin"
    if not user.subject:
        return None
    if job.owner == user.subject:
        return "owner"
    ids = (job.id,) if job.group_id is None else (job.id, job.group_id)
    rows = c.execute(
        f"SELECT role FROM shares WHERE subject=? AND job_id IN ({','.join('?' * len(ids))})", (user.subject, *ids)
    ).fetchall()
    roles = {r[0] for r in rows}
    return "review" if "review" in roles else "read" if roles else None


def allows(role: str | None, need: str) -> bool:
    return RANK.get(role or "", 0) >= NEEDS[need]


def refusal(role: str | None, need: str) -> AccessError:
    """The error for a user whose `role` does not allow `need`: who cannot see it learns nothing of it."""
    return AccessError(ACCESS_REFUSED if role is None else REFUSED_FOR.get(need, ACCESS_REFUSED))


def visible(user: User) -> tuple[str, tuple]:
    """A WHERE clause (and its arguments) for the jobs `user` may see."""
    if user.is_admin:
        return "1", ()
    s = user.subject
    shared = "(SELECT job_id FROM shares WHERE subject = ?)"
    return f"(owner = ? OR id IN {shared} OR group_id IN {shared})", (s, s, s)


def add_share(c: sqlite3.Connection, job_id: int, subject: str, role: str, by: str) -> None:
    c.execute(
        "INSERT INTO shares VALUES (?, ?, ?, ?, ?) ON CONFLICT(job_id, subject) DO UPDATE "
        "SET role=excluded.role, granted_by=excluded.granted_by, granted_at=excluded.granted_at",
        (job_id, subject, role, by, time.time()),
    )


def shares_of(c: sqlite3.Connection, job_id: int) -> list[Share]:
    rows = c.execute("SELECT * FROM shares WHERE job_id=? ORDER BY subject", (job_id,)).fetchall()
    return [Share(*r) for r in rows]


def copy_shares(c: sqlite3.Connection, old_id: int, new_id: int) -> None:
    """A retry is the same audit: it is shared with whoever the job it retries was shared with."""
    c.execute(
        "INSERT OR IGNORE INTO shares SELECT ?, subject, role, granted_by, granted_at FROM shares WHERE job_id=?",
        (new_id, old_id),
    )
