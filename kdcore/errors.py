"""The one error tree of kdcore.

    KDCoreError                 anything the user can fix; the CLI exits 2, the UI shows st.error
    ├── InputError              bad data: unreadable archive, wrong shapes, empty image set
    ├── ConfigError             a config value or key that is not allowed
    ├── ModelLoadError          a model file that cannot be loaded safely or does not match its spec
    └── Cancelled               a job was cancelled through its progress callback

Messages say what was got, what was expected and what to do. Anything that is not a
KDCoreError is a bug and must surface with its traceback.
"""

from __future__ import annotations


class KDCoreError(Exception):
    """Base of every error a user can act on."""


class InputError(KDCoreError):
    """Input data (images, archives, tensors) is missing, unreadable or inconsistent."""


class ConfigError(KDCoreError):
    """A configuration value, key or combination is not valid."""


class ModelLoadError(KDCoreError):
    """A model file cannot be loaded safely, or does not fit the declared architecture."""


class Cancelled(KDCoreError):
    """Raised from a progress callback to stop a running job cooperatively."""
