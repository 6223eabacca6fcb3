"""The one error tree of kdcore.

    KDCoreError                 anything the user can fix; the CLI exits 2, the UI shows st.error
    ├── InputError              bad data: unreadable archive, wrong shapes, empty image set
    ├── ConfigError             a config value or key that is not allowed
    ├── ModelLoadError          a model file that cannot be loaded safely or does not match its spec
    ├── AccessError             another user's item: not shared with this user, or not for this act
    ├── QuotaError              a user's quota (jobs queued or running, bytes of uploads) is reached
    └── Cancelled               a job was cancelled through its progress callback

Messages say what was got, what was expected and what to do. Anything that is not a
KDCoreError is a bug and must surface with its traceback. An error may carry `details`: the facts
behind its message as plain JSON values (e.g. the tensor names a model file lacks), for a UI that
shows them differently; they survive the sandbox (`checked_details` on the way back).
"""

from __future__ import annotations


class KDCoreError(Exception):
    """Base of every error a user can act on."""

    def __init__(self, *args: object, details: dict | None = None) -> None:
        super().__init__(*args)
        self.details: dict = dict(details or {})


def checked_details(d: object) -> dict:
    """`details` read back from an untrusted process: str keys → str, int or list of str; else dropped."""
    if not isinstance(d, dict):
        return {}
    ok = (str, int)
    return {
        k: v
        for k, v in d.items()
        if isinstance(k, str) and (isinstance(v, ok) or (isinstance(v, list) and all(isinstance(x, str) for x in v)))
    }


class InputError(KDCoreError):
    """Input data (images, archives, tensors) is missing, unreadable or inconsistent."""


class ConfigError(KDCoreError):
    """A configuration value, key or combination is not valid."""


class ModelLoadError(KDCoreError):
    """A model file cannot be loaded safely, or does not fit the declared architecture."""


class AccessError(KDCoreError):
    """The item belongs to another user who has not shared it (so far) with this one, or not for this act.
    Its message never says what the item holds (no label, no model)."""


class QuotaError(KDCoreError):
    """A user reached one of their quotas (`kdcore.limits`: quota_*); nothing was stored or queued."""


class Cancelled(KDCoreError):
    """Raised from a progress callback to stop a running job cooperatively."""
