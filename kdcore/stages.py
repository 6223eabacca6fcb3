"""Content-keyed stage outputs, so a re-run with the same inputs skips a finished stage.

A stage's outputs live in `<root>/<name>-<key>/`. The folder is built under a temporary name
and renamed into place only when the stage has finished, so a crash or cancellation never
leaves a half-written stage that a later run would trust. The key is a hash of everything the
stage depends on (config values, input tensors, upstream stage keys).

Runs that need the same stage at once (the parts of a fanned-out sweep training one seed's
teacher in a shared cache, on one machine or several over a shared mount) take turns: a lock file
per stage, so the second waits and reuses the first's output instead of computing it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.config import to_dict
from kdcore.data.imageset import ImageSet
from kdcore.io import atomic_write_json, read_json

log = logging.getLogger("kdcore")


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, ImageSet):
        _feed(h, obj.images)
        _feed(h, obj.labels if obj.labels is not None else "nolabels")
    elif isinstance(obj, nn.Module):
        for k, v in obj.state_dict().items():
            h.update(k.encode())
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}[".encode())
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(json.dumps(to_dict(obj), sort_keys=True, default=str).encode())


def fingerprint(*parts: Any) -> str:
    """A short stable hash of configs, tensors, image sets and models."""
    h = hashlib.blake2b(digest_size=10)
    for p in parts:
        _feed(h, p)
    return h.hexdigest()


@dataclass(frozen=True)
class StageOutput:
    name: str
    key: str
    dir: Path
    meta: dict  # what the stage function returned (JSON)
    reused: bool
    seconds: float  # time this run spent (≈ 0 when reused); meta["seconds"] has the original


class Stages:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def run(self, name: str, key: str, fn: Callable[[Path], dict]) -> StageOutput:
        """Return the finished stage `name`/`key`, running `fn(folder) -> meta` if it is not done."""
        final = self.path(name, key)
        done = final / "stage.json"
        if done.exists():
            log.info("stage %s: reusing %s", name, final)
            return StageOutput(name, key, final, read_json(done)["meta"], True, 0.0)
        self.root.mkdir(parents=True, exist_ok=True)
        with _turn(self.root / f".{name}-{key}.lock"):
            if done.exists():  # another run computed it while this one waited
                log.info("stage %s: reusing %s (computed by a concurrent run)", name, final)
                return StageOutput(name, key, final, read_json(done)["meta"], True, 0.0)
            return self._compute(name, key, fn, final)

    def _compute(self, name: str, key: str, fn: Callable[[Path], dict], final: Path) -> StageOutput:
        tmp = self.root / f".{name}-{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log.info("stage %s: running", name)
        t0 = time.perf_counter()
        try:
            meta = fn(tmp)
            seconds = time.perf_counter() - t0
            atomic_write_json(tmp / "stage.json", {"name": name, "key": key, "seconds": seconds, "meta": meta})
            if final.exists():  # a concurrent run finished it first; keep theirs
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("stage %s: done in %.1f s", name, seconds)
        return StageOutput(name, key, final, meta, False, seconds)


class _turn:
    """An exclusive lock on `path` (flock; released when the holder exits, even by a crash). It polls
    rather than blocks, so a cancel or timeout (which interrupt the main thread) still stops a waiter."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        # Removed while held, so a finished (or failed) stage leaves no file behind. A run that opened
        # the old file meanwhile may then overlap one that made a new one: that costs a duplicate
        # computation at worst, never a wrong stage (outputs are renamed into place atomically).
        self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
