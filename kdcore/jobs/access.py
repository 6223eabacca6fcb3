"""One user's side of the job store: only what they may see, only the acts their role allows, each act
written to the access trail, and their quotas checked before anything is stored or queued.

    Access(store, user)
      .jobs()                  the jobs the user may see (owned, shared with them, or every job for an admin)
      .open(id, need, action)  one job, or AccessError; the act (opened, downloaded, ...) or the refusal in the trail
      .submit(...)             a job owned by the user, refused (QuotaError) at quota_jobs queued or running
      .cancel(id) .retry(id)   the owner's or an admin's acts (need "manage")
      .share(id, who, role)    the owner shares an audit: "read" or "review"; .unshare, .shares
      .review(id, ...)         verdicts on the audit's candidates (need "review"), stamped with the user
      .keep_upload(path, n)    charge an upload to the user before it is written (QuotaError at quota_upload_bytes)
      .trail()                 the access trail, for admins

Roles are `kdcore.jobs.owners`'; the trail is `kdcore.jobs.trail`'; quotas `kdcore.jobs.quotas`'. The
dashboard builds one per request from its signed-in user; the CLI is `LOCAL_USER`, the store's admin.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdcore import limits as limits_mod
from kdcore.errors import AccessError, InputError
from kdcore.jobs import owners, quotas
from kdcore.jobs import trail as trails
from kdcore.jobs.owners import SHARE_ROLES, Share, User
from kdcore.jobs.review import Reviews
from kdcore.jobs.store import Job, JobStore
from kdcore.limits import Limits


class Access:
    def __init__(self, store: JobStore, user: User, limits: Limits | None = None) -> None:
        self.store, self.user = store, user
        self.limits = limits or limits_mod.current()

    # ---- seeing ----------------------------------------------------------------------------
    def jobs(self, states: tuple[str, ...] | None = None, limit: int = 500) -> list[Job]:
        return self.store.list(states, limit, user=self.user)

    def role(self, job: Job) -> str | None:
        with self.store.transaction() as c:
            return owners.role_of(c, self.user, job)

    def may(self, job: Job, need: str = "read") -> bool:
        return owners.allows(self.role(job), need)

    def open(
        self, job_id: int | str, need: str = "read", action: str = "opened", detail: str = "", record: bool = True
    ) -> Job:
        """The job, when the user's role allows `need`; the act (`action`) goes to the trail unless not
        `record` (a caller that records it once done). Refused: AccessError, and the refusal goes to
        the trail with what was tried."""
        try:
            job = self.store.get(int(job_id))
        except ValueError as e:
            raise InputError(f"There is no job {job_id!r}; a job is named by its number, e.g. ?job=12") from e
        with self.store.transaction(immediate=True) as c:
            role = owners.role_of(c, self.user, job)
            if not owners.allows(role, need):
                trails.append(c, self.user.subject, "refused", job.id, f"{action}{': ' + detail if detail else ''}")
                refused = owners.refusal(role, need)
            else:
                refused = None
                if record:
                    trails.append(c, self.user.subject, action, job.id, detail)
        if refused is not None:
            raise refused
        return job

    def downloaded(self, job_id: int, what: str) -> None:
        """Record a download of `what` from the job (refused, and recorded, for who may not read it)."""
        self.open(job_id, "read", "downloaded", what)

    # ---- acting ----------------------------------------------------------------------------
    def submit(self, kind: str, config: dict | Any, label: str = "", parent_id: int | None = None) -> Job:
        self._signed_in()
        return self.store.submit(
            kind, config, label=label, parent_id=parent_id, owner=self.user.subject, quota=self.limits.quota_jobs
        )

    def cancel(self, job_id: int) -> Job:
        self.open(job_id, "manage", "cancelled")
        return self.store.cancel(job_id)

    def retry(self, job_id: int) -> Job:
        old = self.open(job_id, "manage", "retried", record=False)
        new = self.store.retry(job_id, quota=self.limits.quota_jobs)
        with self.store.transaction() as c:
            trails.append(c, self.user.subject, "retried", old.id, f"as job {new.id}")
        return new

    def share(self, job_id: int, subject: str, role: str) -> Share:
        subject = subject.strip()
        if role not in SHARE_ROLES:
            raise InputError(f"A share is {' or '.join(SHARE_ROLES)}; got {role!r}")
        if not subject:
            raise InputError("Name the user to share with (their subject, as their Jobs page shows it)")
        job = self.open(job_id, "manage", "shared", record=False)
        with self.store.transaction(immediate=True) as c:
            owners.add_share(c, job.id, subject, role, self.user.subject)
            trails.append(c, self.user.subject, "shared", job.id, f"with {subject} ({role})")
            return next(s for s in owners.shares_of(c, job.id) if s.subject == subject)

    def unshare(self, job_id: int, subject: str) -> None:
        job = self.open(job_id, "manage", "unshared", record=False)
        with self.store.transaction(immediate=True) as c:
            c.execute("DELETE FROM shares WHERE job_id=? AND subject=?", (job.id, subject))
            trails.append(c, self.user.subject, "unshared", job.id, f"with {subject}")

    def shares(self, job_id: int) -> list[Share]:
        job = self.open(job_id, "read", "opened", record=False)
        with self.store.transaction() as c:
            return owners.shares_of(c, job.id)

    def review(
        self, job_id: int, samples: Iterable[int], verdict: str | None, reviewer: str = "", note: str = ""
    ) -> int:
        """Set verdicts on the audit's candidates (`Reviews.set`), stamped with the user; returns how many changed."""
        samples = list(samples)
        job = self.open(job_id, "review", "reviewed", record=False)
        n = Reviews(self.store).set(job.run_dir, samples, verdict, reviewer, note, owner=self.user.subject)
        if n:
            with self.store.transaction() as c:
                what = f"{n} sample{'s' * (n != 1)} {'as ' + verdict if verdict else 'cleared'}"
                trails.append(c, self.user.subject, "reviewed", job.id, what)
        return n

    # ---- quotas ----------------------------------------------------------------------------
    def keep_upload(self, path: Path, nbytes: int) -> bool:
        """Charge the user for keeping `path` (before it is written); QuotaError, nothing charged,
        when it would take them over their upload quota. True when newly charged."""
        self._signed_in()
        rel = str(Path(path).resolve().relative_to(self.store.data_dir))
        with self.store.transaction(immediate=True) as c:
            return quotas.charge_upload(c, self.user.subject, rel, nbytes, self.limits.quota_upload_bytes)

    def forget_upload(self, path: Path) -> None:
        rel = str(Path(path).resolve().relative_to(self.store.data_dir))
        with self.store.transaction(immediate=True) as c:
            quotas.release_upload(c, self.user.subject, rel)

    def usage(self) -> dict[str, int]:
        with self.store.transaction() as c:
            return {
                "jobs": quotas.active_jobs(c, self.user.subject),
                "upload_bytes": quotas.upload_bytes(c, self.user.subject),
            }

    # ---- the trail -------------------------------------------------------------------------
    def trail(self, job_id: int | None = None, limit: int = 10_000) -> list[trails.Entry]:
        if not self.user.is_admin:
            raise AccessError("Only an admin may read the access trail.")
        with self.store.transaction() as c:
            return trails.entries(c, job_id, limit)

    def _signed_in(self) -> None:
        if not self.user.subject:
            raise AccessError("Sign in first: a visitor who is not signed in cannot upload or start audits.")
