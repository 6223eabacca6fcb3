"""Progress callbacks.

Training loops call `on_step(step, total, metrics)`; pipelines call
`on_progress(stage, step, total, metrics)`. The CLI turns them into progress bars, the job
worker into database rows (and raises `kdcore.errors.Cancelled` from them to stop a job).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

StepFn = Callable[[int, int, dict[str, Any]], None]
ProgressFn = Callable[[str, int, int, dict[str, Any]], None]


def no_progress(stage: str, step: int, total: int, metrics: dict[str, Any]) -> None:
    """The default callback: do nothing."""


def for_stage(on_progress: ProgressFn, stage: str) -> StepFn:
    """Bind a pipeline callback to one stage, giving a training-loop callback."""
    return lambda step, total, metrics: on_progress(stage, step, total, metrics)
