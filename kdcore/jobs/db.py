"""The job store's database connection: one SQLite file in WAL mode, opened briefly for each use.

Owns opening a connection, the transaction around each use, and creating tables (idempotent, with
the columns an older file lacks added on open). It knows no table: the jobs (`kdcore.jobs.job`),
fan-out groups (`kdcore.jobs.groups`) and reviewers' verdicts (`kdcore.jobs.review`) each bring
their own schema. Every connection is short-lived, so worker processes, CLI calls and the
dashboard can all use the database at once; SQLite's WAL lets readers proceed while a writer commits.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 30.0  # how long a connection waits for another process's write to commit


class Database:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def ensure_schema(self, script: str, table: str = "", added_columns: tuple[tuple[str, str], ...] = ()) -> None:
        """Create tables (idempotent) and add to `table` each of `added_columns` ((name, SQL type
        with default)) it lacks, for a file written by an older release. executescript commits on
        its own, so this runs outside `transaction()`; WAL mode persists in the file once set."""
        c = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        try:
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(script)
            if added_columns:
                have = {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
                for name, decl in added_columns:
                    if name not in have:
                        c.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
                c.commit()
        finally:
            c.close()

    @contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction: committed when the block ends, rolled back if it raises.
        `immediate` takes the write lock at the start (for a read-then-write that must not race)."""
        c = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            c.row_factory = sqlite3.Row
            c.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
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
