"""What every run kind shares: the run directory layout, its log, and report writing.

<run_dir>/config.json    resolved config (written first)
<run_dir>/log.txt        the run's log
<run_dir>/stages/        cached stage outputs (reused by re-runs and retries)
<run_dir>/models/        student / finetuned as .safetensors + .json spec
<run_dir>/candidates.csv per-sample detox table, ranked by suspicion
<run_dir>/confusion/     confusion matrices as CSV
<run_dir>/report.json    the result (written last)
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from kdcore import __version__
from kdcore.config import to_dict
from kdcore.device import describe, resolve_device
from kdcore.io import atomic_write_json

log = logging.getLogger("kdcore")


@contextlib.contextmanager
def run_logging(run_dir: Path) -> Iterator[None]:
    """Send kdcore's log to <run_dir>/log.txt for the duration of a run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.INFO)
    try:
        yield
    except BaseException as e:
        log.error("run stopped: %s: %s", type(e).__name__, e)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(old)


class Run(NamedTuple):
    dir: Path
    device: torch.device
    config: dict  # the resolved config, as written to config.json
    started: float  # time.perf_counter() at the start, for wall_s


@contextlib.contextmanager
def start_run(run_dir: str | Path, kind: str, config, device: str) -> Iterator[Run]:
    """What every run kind does first: resolve the device, send the log to <run_dir>/log.txt,
    write config.json, and check the config's inputs (when it has `check_inputs`)."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    with run_logging(run_dir):
        resolved = write_config(run_dir, kind, config)
        check = getattr(config, "check_inputs", None)
        if check is not None:
            check()
        yield Run(run_dir, dev, resolved, time.perf_counter())


def write_config(run_dir: Path, kind: str, config) -> dict:
    resolved = {"kind": kind, **to_dict(config)}
    atomic_write_json(run_dir / "config.json", resolved)
    return resolved


def environment(device: torch.device) -> dict:
    return {
        "kdcore": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": describe(device),
    }


def write_report(run_dir: Path, report: dict) -> Path:
    return atomic_write_json(run_dir / "report.json", report)
