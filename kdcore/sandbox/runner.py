"""The parent side of the sandbox (kdcore.sandbox's docstring says how one call runs): the budgets, the
fork server, `run` (one call in a child) and the rebuilding of its answer. The readers in
`kdcore.sandbox` and its checks (`.model_check`, `.image_summary`) call `run`; the child side is
`.child`.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import glob
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch

from kdcore import errors, limits
from kdcore.data.imageset import ImageSet
from kdcore.errors import InputError, KDCoreError
from kdcore.models.spec import ModelSpec
from kdcore.sandbox.confine import FAILED_EXIT, available

PathLike = str | os.PathLike
_GiB = 2**30
log = logging.getLogger("kdcore")
_S_PER_GIB = 300.0  # extra CPU and wall seconds per GiB of input, for jobs (≈ 3.5 MB/s, generous)
_MAX_ANSWER_JSON = 256 * 2**20  # the answer's JSON part (image sets list every source file)
_ERRORS = {c.__name__: c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, KDCoreError)}


@dataclass(frozen=True)
class Budget:
    """What one parsing process may use. Bytes and seconds."""

    memory_bytes: int
    cpu_s: float
    timeout_s: float
    hint: str = "sandbox_memory_bytes / sandbox_cpu_s / sandbox_timeout_s"  # the limits that set it

    @classmethod
    def flat(cls, lim: limits.Limits | None = None) -> Budget:
        """The sandbox_* limits as they are: the dashboard's checks."""
        lim = lim or limits.current()
        return cls(lim.sandbox_memory_bytes, lim.sandbox_cpu_s, lim.sandbox_timeout_s)

    @classmethod
    def scaled(cls, path: PathLike, what: Literal["model", "images"], lim: limits.Limits | None = None) -> Budget:
        """For jobs: the flat budget plus room that grows with the input (see the module docstring)."""
        lim = lim or limits.current()
        size = _input_bytes(Path(path), lim.max_archive_entries)
        if what == "images":
            extra_mem, hint = lim.max_dataset_bytes, "sandbox_memory_bytes + max_dataset_bytes"
        else:
            extra_mem, hint = 3 * min(size, lim.max_model_file_bytes), "sandbox_memory_bytes + 3 × the file size"
        extra_s = _S_PER_GIB * size / _GiB
        return cls(
            lim.sandbox_memory_bytes + extra_mem,
            lim.sandbox_cpu_s + extra_s,
            lim.sandbox_timeout_s + extra_s,
            f"{hint}; sandbox_cpu_s / sandbox_timeout_s + {_S_PER_GIB:.0f} s per GiB of input",
        )


BudgetArg = Budget | Literal["flat", "scaled"]


def prestart() -> None:
    """Start the fork server now (it imports torch once, ~2 s), so that the first check is fast too."""
    with _SERVER.lock:
        if _SERVER.proc is None or _SERVER.proc.poll() is not None:
            _SERVER.proc = _start_server()


# ── the parent side ──────────────────────────────────────────────────────────────────────────────


def run(
    target: str,
    args: tuple = (),
    budget: Budget | None = None,
    error: type[KDCoreError] = InputError,
    name: PathLike = "",
    kwargs: dict | None = None,
    reads: tuple[PathLike, ...] = (),
) -> Any:
    """Call `target` ("package.module:function") with `args` in a limited child process and return
    its value, rebuilt from JSON + safetensors (see the module docstring for what it raises).
    `name` names the input in error messages; `error` is raised for a crashed, killed or timed-out child.
    `reads`: the files and folders the child may read besides Python (`.confine`): its inputs.
    """
    budget = budget or Budget.flat()
    label = f"{Path(str(name)).name or name}: " if str(name) else ""
    work = Path(tempfile.mkdtemp(prefix="kdcore-sandbox-"))
    pid = None
    try:
        # parent → child may be a pickle: the child trusts the parent, not the other way round
        inputs = [os.path.abspath(p) for p in reads]
        request = (target, args, kwargs or {}, dataclasses.asdict(budget), dataclasses.asdict(limits.current()), inputs)
        (work / "request.pkl").write_bytes(pickle.dumps(request))
        pid = _SERVER.fork(work)
        t0 = time.monotonic()
        ended = _wait(work, budget.timeout_s)
        timed_out = ended is None
        if timed_out:
            _kill_group(pid)
            ended = _wait(work, 10.0)
        pid = None
        if ended is not None:
            confined = available()
            log.log(
                logging.WARNING if confined.note else logging.INFO,
                "sandbox: %s read by %s in %.2f s (%.2f s CPU, peak %.0f MB; %s)",
                Path(str(name)).name or "input",
                target,
                time.monotonic() - t0,
                ended[2],
                ended[1] / 1024,
                confined.summary,
            )
        answer = None if timed_out else _read_answer(work)
        if answer is None:
            code = None if ended is None else os.waitstatus_to_exitcode(ended[0])
            raise error(f"{label}this file could not be read safely ({_why(code, timed_out, budget)})")
        return _rebuild(answer, work, error, label, budget)
    finally:
        if pid is not None:  # the parent was interrupted (cancel, job timeout) while waiting
            _kill_group(pid)
            _wait(work, 10.0)
        shutil.rmtree(work, ignore_errors=True)


class _ForkServer:
    """A helper process (`python -m kdcore.sandbox serve`) that has imported kdcore and torch once
    and forks one child per call. It writes each child's wait status to `<work>/exit`. Started on
    first use, restarted if it died; it exits when this process closes its stdin."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def fork(self, work: Path) -> int:
        with self.lock:
            for attempt in range(2):
                if self.proc is None or self.proc.poll() is not None:
                    self.proc = _start_server()
                try:
                    self.proc.stdin.write((json.dumps({"work": str(work)}) + "\n").encode())
                    self.proc.stdin.flush()
                    line = self.proc.stdout.readline()
                    return int(line)
                except (OSError, ValueError):
                    self.proc.kill()
                    self.proc.wait()
                    self.proc = None
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """At this process's exit: close the server's stdin and wait while it removes its temp folder,
        so that nothing of it lingers once this process is gone."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _start_server() -> subprocess.Popen:
    # The same modules as here, and the limits in force (each request carries them as well).
    env = {**os.environ, **limits.current().to_env(), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    atexit.unregister(_SERVER.stop)  # registered once, however often the server is restarted
    atexit.register(_SERVER.stop)
    return subprocess.Popen(
        [sys.executable, "-m", "kdcore.sandbox.child", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,  # a Ctrl-C meant for the parent does not reach it
    )


_SERVER = _ForkServer()


def _wait(work: Path, timeout_s: float) -> tuple[int, int, float] | None:
    """(wait status, peak RSS in KiB, CPU seconds) of the child once the server has written them,
    or None after `timeout_s`."""
    exit_file = work / "exit"
    end = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        if exit_file.is_file():
            with contextlib.suppress(ValueError, OSError):
                status, rss, cpu = exit_file.read_text().split()
                return int(status), int(rss), float(cpu)
        if time.monotonic() > end:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # it had not made its own group yet


def budget_for(budget: BudgetArg, path: PathLike, what: Literal["model", "images"]) -> Budget:
    if budget == "flat":
        return Budget.flat()
    if budget == "scaled":
        return Budget.scaled(path, what)
    return budget


def model_inputs(path: PathLike, spec: ModelSpec | None = None) -> tuple[str, ...]:
    """What a model reader may open (`run`'s `reads`): the file, the spec saved beside it
    (`<stem>.json`), an architecture file saved beside it (`<stem>.source.<ext>`), and the given
    spec's own source (a `file:<Class>` Python file, a graph), relative to the model's folder."""
    p = Path(path)
    found = [p, p.with_suffix(".json"), *p.parent.glob(f"{glob.escape(p.stem)}.source.*")]
    if spec is not None and spec.source:
        found.append(p.parent / spec.source)  # an absolute source stays as it is
    return tuple(str(f) for f in found)


def _input_bytes(path: Path, max_entries: int) -> int:
    """The size of a file, or of the regular files under a folder (at most `max_entries` looked at)."""
    if path.is_file():
        return path.stat().st_size
    total, seen = 0, 0
    for dirpath, _dirs, filenames in os.walk(path):
        for fn in filenames:
            seen += 1
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, fn))
                total += st.st_size if (st.st_mode & 0o170000) == 0o100000 else 0
        if seen > max_entries:
            break
    return total


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _why(exitcode: int | None, timed_out: bool, b: Budget) -> str:
    fix = f"if the file is genuine, raise the limits behind it ({b.hint}) with --limit NAME=VALUE or KDAUDIT_LIMIT_NAME"
    if timed_out:
        return f"it took longer than {b.timeout_s:g} s; {fix}"
    if exitcode == FAILED_EXIT:
        return (
            "the sandbox could not restrict its file and network access, which this kernel offers, so it did not "
            "read it; this is a bug in kdaudit: please report it with the server's log"
        )
    if exitcode == -signal.SIGXCPU:
        return f"it took longer than {b.cpu_s:g} s of CPU time; {fix}"
    if exitcode == -signal.SIGKILL:  # killed from outside: the kernel's out-of-memory killer
        return f"it was killed, most likely for needing more than {_gb(b.memory_bytes)} of memory; {fix}"
    if exitcode is not None and exitcode < 0:
        return f"it crashed with {signal.Signals(-exitcode).name}, e.g. from nesting too deep or running out of memory"
    return f"it crashed (exit code {exitcode}) without an answer"


def _read_answer(work: Path) -> dict | None:
    path = work / "answer.json"
    if not path.is_file() or path.stat().st_size > _MAX_ANSWER_JSON:
        return None
    try:
        answer = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    return answer if isinstance(answer, dict) else None


def _rebuild(answer: dict, work: Path, error: type[KDCoreError], label: str, b: Budget) -> Any:
    status = answer.get("status")
    if status == "error":
        cls = _ERRORS.get(str(answer.get("class")), KDCoreError)
        raise cls(str(answer.get("message", "")), details=errors.checked_details(answer.get("details")))
    if status == "memory":
        raise error(
            f"{label}this file could not be read safely (it needed more than {_gb(b.memory_bytes)} of memory); "
            f"if the file is genuine, raise the limits behind it ({b.hint}) with --limit NAME=VALUE"
        )
    if status == "refused":
        what = "open a network connection" if answer.get("kind") == "network" else "open a file outside its upload"
        raise error(f"{label}this file could not be read safely (it tried to {what}, which the sandbox refuses)")
    if status == "bug":
        raise RuntimeError(f"The sandboxed reader failed with a bug:\n{str(answer.get('traceback', ''))[-8000:]}")
    if status != "ok":
        raise error(f"{label}this file could not be read safely (its reader gave no valid answer)")
    tensors = {}
    if answer.get("tensors"):
        try:
            tensors = safetensors.torch.load_file(work / "tensors.safetensors")
        except Exception as e:  # the child's own output; a broken one means the child went wrong
            raise error(f"{label}this file could not be read safely (its reader's answer is broken: {e})") from e
    try:
        return _decode(answer.get("value"), tensors, depth=0)
    except (ValueError, KeyError, TypeError) as e:
        raise error(f"{label}this file could not be read safely (its reader's answer is broken: {e})") from e


def _decode(v: Any, tensors: dict[str, torch.Tensor], depth: int) -> Any:
    """JSON + tensors → a value of the closed set of types `_encode` writes."""
    if depth > 20:
        raise ValueError("the sandbox answer is nested too deep")
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, list):
        return [_decode(x, tensors, depth + 1) for x in v]
    if not isinstance(v, dict) or len(v) != 1:
        raise ValueError(f"unexpected value in the sandbox answer: {type(v).__name__}")
    ((tag, body),) = v.items()
    if tag == "tensor":
        return tensors[str(body)]
    if tag == "tuple":
        return tuple(_decode(x, tensors, depth + 1) for x in body)
    if tag == "dict":
        return {str(k): _decode(x, tensors, depth + 1) for k, x in body}
    if tag == "ModelSpec":
        return ModelSpec.from_dict(_decode(body, tensors, depth + 1))
    if tag == "ImageSet":
        return ImageSet(**_decode(body, tensors, depth + 1))
    raise ValueError(f"unexpected tag {tag!r} in the sandbox answer")
