"""Reviewer verdicts on poison-data candidates, with an audit trail.

A person judges flagged training samples as `poison`, `clean` or `unsure`. The current verdict
per (run, sample) is in `verdicts`; every change is appended to `verdict_log` (never updated or
deleted), so who decided what, when, and what it replaced can always be shown. `reviewer` is the
name a person typed; `owner` the subject of the signed-in user who set it ("local" in single-user mode
and in a store from before owners). Verdicts live in the job store's database file (`kdcore.jobs.db`)
so they survive restarts and can be read by any process; who may set them is `kdcore.jobs.access`'s.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kdcore.errors import InputError
from kdcore.jobs.db import Database
from kdcore.jobs.job import LOCAL

VERDICTS = ("poison", "clean", "unsure")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    run_dir TEXT NOT NULL,
    sample INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    reviewer TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    decided_at REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT 'local',
    PRIMARY KEY (run_dir, sample)
);
CREATE TABLE IF NOT EXISTS verdict_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_dir TEXT NOT NULL,
    sample INTEGER NOT NULL,
    verdict TEXT,
    previous TEXT,
    reviewer TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    decided_at REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT 'local'
);
CREATE INDEX IF NOT EXISTS verdict_log_run ON verdict_log(run_dir, sample);
"""
_OWNER = (("owner", "TEXT NOT NULL DEFAULT 'local'"),)  # added to both tables of an older store


@dataclass(frozen=True)
class Verdict:
    sample: int
    verdict: str
    reviewer: str
    note: str
    decided_at: float
    owner: str = LOCAL


class Reviews:
    def __init__(self, store: Database):
        """`store`: the database to keep verdicts in (a `JobStore`, which is one)."""
        self.store = store
        store.ensure_schema(_SCHEMA, "verdicts", _OWNER)
        store.ensure_schema("", "verdict_log", _OWNER)

    def set(
        self,
        run_dir: str | Path,
        samples: Iterable[int],
        verdict: str | None,
        reviewer: str = "",
        note: str = "",
        owner: str = LOCAL,
    ) -> int:
        """Record `verdict` for every sample (None clears it), set by the user `owner`. Returns how many changed."""
        if verdict is not None and verdict not in VERDICTS:
            raise InputError(f"Verdict must be one of {VERDICTS}; got {verdict!r}")
        run, now, changed = str(run_dir), time.time(), 0
        with self.store.transaction(immediate=True) as c:
            for s in samples:
                s = int(s)
                row = c.execute("SELECT verdict FROM verdicts WHERE run_dir=? AND sample=?", (run, s)).fetchone()
                previous = row[0] if row else None
                if previous == verdict:
                    continue
                if verdict is None:
                    c.execute("DELETE FROM verdicts WHERE run_dir=? AND sample=?", (run, s))
                else:
                    c.execute(
                        "INSERT INTO verdicts (run_dir, sample, verdict, reviewer, note, decided_at, owner) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_dir, sample) DO UPDATE "
                        "SET verdict=excluded.verdict, reviewer=excluded.reviewer, note=excluded.note, "
                        "decided_at=excluded.decided_at, owner=excluded.owner",
                        (run, s, verdict, reviewer, note, now, owner),
                    )
                c.execute(
                    "INSERT INTO verdict_log (run_dir, sample, verdict, previous, reviewer, note, decided_at, owner) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run, s, verdict, previous, reviewer, note, now, owner),
                )
                changed += 1
        return changed

    def get(self, run_dir: str | Path) -> dict[int, Verdict]:
        with self.store.transaction() as c:
            q = "SELECT sample, verdict, reviewer, note, decided_at, owner FROM verdicts WHERE run_dir=?"
            rows = c.execute(q, (str(run_dir),)).fetchall()
        return {r[0]: Verdict(*r) for r in rows}

    def history(self, run_dir: str | Path, sample: int | None = None) -> list[dict]:
        q = "SELECT sample, verdict, previous, reviewer, note, decided_at, owner FROM verdict_log WHERE run_dir=?"
        args: list = [str(run_dir)]
        if sample is not None:
            q += " AND sample=?"
            args.append(int(sample))
        with self.store.transaction() as c:
            rows = c.execute(q + " ORDER BY id", args).fetchall()
        return [dict(r) for r in rows]

    def to_csv(self, run_dir: str | Path) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["sample", "verdict", "reviewer", "note", "decided_at_utc"])
        for v in sorted(self.get(run_dir).values(), key=lambda v: v.sample):
            w.writerow(
                [
                    v.sample,
                    v.verdict,
                    v.reviewer,
                    v.note,
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v.decided_at)),
                ]
            )
        return buf.getvalue()
