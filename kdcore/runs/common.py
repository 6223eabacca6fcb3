"""What every run kind shares: the run directory layout, its log, and report writing.

<run_dir>/config.json    resolved config (written first)
<run_dir>/log.txt        the run's log
<run_dir>/stages/        cached stage outputs (reused by re-runs and retries)
<run_dir>/models/        student / finetuned as .safetensors + .json spec
<run_dir>/candidates.csv per-sample detox table, ranked by suspicion
<run_dir>/confusion/     confusion matrices as CSV
<run_dir>/view/          what the dashboard's first visit needs (kdcore.views; demo and audit)
<run_dir>/report.json    the result (written last)
<run_dir>/outcome.json   how a job (or one model of an audit of many) ended: state and error
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from kdcore import __version__, sandbox
from kdcore.config import to_dict
from kdcore.data.imageset import ImageSet
from kdcore.device import describe, resolve_device
from kdcore.errors import InputError
from kdcore.io import atomic_write_json, read_json
from kdcore.models.spec import ModelSpec

log = logging.getLogger("kdcore")


@contextlib.contextmanager
def run_logging(run_dir: Path) -> Iterator[None]:
    """Send kdcore's log to <run_dir>/log.txt for the duration of a run. Nested in one for the same
    file (the job worker opens it around the run, so that its lines on the job's stages land there
    too), it adds no second handler, so no line is written twice."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = os.path.abspath(run_dir / "log.txt")
    nested = any(isinstance(h, logging.FileHandler) and h.baseFilename == path for h in log.handlers)
    handler = None if nested else logging.FileHandler(path, encoding="utf-8")
    old = log.level
    if handler is not None:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        yield
    except BaseException as e:
        log.error("run stopped: %s: %s", type(e).__name__, e)
        raise
    finally:
        if handler is not None:
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


OUTCOME = "outcome.json"


def write_outcome(run_dir: Path, state: str, error: str = "") -> None:
    """How the run in `run_dir` ended (a job's terminal state, and why when it did not succeed), for
    whoever gathers it later without the job store (an audit of many models: kdcore.runs.audit_many)."""
    atomic_write_json(Path(run_dir) / OUTCOME, {"state": state, "error": error})


def read_outcome(run_dir: Path) -> dict | None:
    """{"state", "error"} as `write_outcome` left it; None when the run never ended (or never started)."""
    path = Path(run_dir) / OUTCOME
    if not path.is_file():
        return None
    d = read_json(path)
    return {"state": str(d.get("state", "")), "error": str(d.get("error", ""))}


def labelled_sets(
    spec: ModelSpec, train_path: str = "", test_path: str = "", clean_path: str = ""
) -> tuple[ImageSet | None, ImageSet | None, ImageSet | None, ModelSpec]:
    """Load the labelled sets of a run (training, test, labelled clean; each optional) so that one
    class index means one class in all of them, and return them with the spec, named when the model
    had no class names. In the sandbox, since the files are the user's.

    The class names come from the model's spec, else from the first set loaded; every later set must
    have exactly those class folders (the reader names missing and unexpected ones), so a missing
    folder cannot shift the labels after it, and `c0…c9` against `0…9` is an error, not a 10 % audit.
    """
    names = spec.class_names or None
    sets: list[ImageSet | None] = []
    for path, what in ((train_path, "train"), (test_path, "test"), (clean_path, "clean-labeled")):
        data = sandbox.load_labeled(path, spec.input_shape, names, name=what) if path else None
        if data is not None:
            if data.num_classes > spec.num_classes or (names is None and data.num_classes != spec.num_classes):
                raise InputError(
                    f"{what} has {data.num_classes} class folders but the model outputs {spec.num_classes} classes; "
                    "give the model's class count and its class names in output order"
                )
            names = names or data.class_names
        sets.append(data)
    if not spec.class_names and names and len(names) == spec.num_classes:
        spec = spec.replace(class_names=tuple(names))
    return sets[0], sets[1], sets[2], spec
