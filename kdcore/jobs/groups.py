"""Fan-out groups: a job whose kind splits into parts (a sweep's cells) and the gathering job above them.

A new job of a kind in `kdcore.runs.PARTS` is queued as one gathering job plus its parts, each a
job row whose `group_id` is the gathering job's id and whose run dir lies inside the gathering
job's. A worker of any executor takes the parts in parallel; the gathering job is not claimable
(`READY`) until every part, and every retry of one, has ended. Retries of a part keep its group.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from kdcore.config import from_dict
from kdcore.jobs.job import LOCAL, TERMINAL, Job, insert_job

# The claimable rows: queued, and no unfinished part in the group of any job with the same run dir
# (a retry of a gathering job keeps the run dir, so it waits for the parts of the job it retries).
READY = (
    "state='queued' AND NOT EXISTS (SELECT 1 FROM jobs p JOIN jobs g ON p.group_id = g.id "
    f"WHERE g.run_dir = jobs.run_dir AND p.state NOT IN {TERMINAL!r})"
)


def fan_out(kind: str, resolved: dict) -> tuple[Any, list] | None:
    """`kdcore.runs.PARTS[kind]` of a validated config: (the gathering config, [(kind, part config,
    part run dir)]); None for a kind that does not fan out."""
    # kdcore.runs imports torch and every run kind (≈1.7 s): a light client of the store (the CLI's
    # `jobs list`, the dashboard's reads) must not pay for it, so only a submit does.
    from kdcore.runs import KINDS, PARTS

    if kind not in PARTS:
        return None
    return PARTS[kind](from_dict(KINDS[kind][0], resolved))


def part_label(label: str, rel: str) -> str:
    return f"{label} · part {Path(rel).name}" if label else f"part {Path(rel).name}"


def insert_group(
    c: sqlite3.Connection,
    runs_dir: Path,
    kind: str,
    resolved: dict,
    parts: list[tuple[str, dict, str]],
    label: str = "",
    run_dir: str | None = None,
    owner: str = LOCAL,
) -> tuple[int, list[int]]:
    """Queue the gathering job and its validated `parts` (kind, config, run dir relative to the
    gathering job's) in the caller's transaction, all owned by `owner`; returns (gathering id, part ids)."""
    gid = insert_job(c, runs_dir, kind, resolved, label, None, run_dir, None, owner)
    root = Path(c.execute("SELECT run_dir FROM jobs WHERE id=?", (gid,)).fetchone()[0])
    ids = [
        insert_job(c, runs_dir, k, cfg, part_label(label, rel), None, str(root / rel), gid, owner)
        for k, cfg, rel in parts
    ]
    return gid, ids


def group_parts(c: sqlite3.Connection, group_id: int) -> list[Job]:
    """The parts of a fan-out job (retries included), oldest first."""
    rows = c.execute("SELECT * FROM jobs WHERE group_id=? ORDER BY id", (int(group_id),)).fetchall()
    return [Job.from_row(r) for r in rows]
