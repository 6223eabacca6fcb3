"""Where kdcore keeps data between runs: `$KDAUDIT_HOME` (default `./kdaudit-data`)."""

from __future__ import annotations

import os
from pathlib import Path


def data_home(override: str | os.PathLike | None = None) -> Path:
    return Path(override or os.environ.get("KDAUDIT_HOME") or "kdaudit-data")


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Shared stage cache (trained demo teachers/baselines), reused across runs."""
    return Path(override) if override else data_home() / "cache"
