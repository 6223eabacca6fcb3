"""Test-only readers for `kdcore.sandbox`: each misbehaves in one way a hostile file can make a
real reader misbehave. They run only inside the sandbox's child process."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time

import torch

from kdcore import errors


def allocate(n_bytes: int) -> int:
    """A memory bomb: asks for `n_bytes` at once (what the allow-listed `bytearray(n)` does)."""
    return len(bytearray(n_bytes))


def allocate_tensor(n_bytes: int) -> int:
    """The same through torch's allocator, which raises RuntimeError, not MemoryError."""
    return torch.empty(n_bytes, dtype=torch.uint8).numel()


def spin() -> None:
    """A CPU bomb (overlapping zip entries, bzip2): never returns, never sleeps."""
    x = 0
    while True:
        x += 1


def sleep(seconds: float) -> None:
    """A hang (a FIFO in an image folder): blocks without using CPU."""
    time.sleep(seconds)


def segfault() -> None:
    """A crash in C code (hashing a tuple nested a million deep overflows the C stack)."""
    os.kill(os.getpid(), signal.SIGSEGV)


def fail(cls: str, message: str) -> None:
    raise getattr(errors, cls)(message)


def bug() -> None:
    raise KeyError("not a KDCoreError")


def write_file(path: str, text: str) -> str:
    """Writes where it is told (relative paths land in the child's working directory)."""
    with open(path, "w") as f:
        f.write(text)
    return os.path.abspath(path)


def values() -> dict:
    return {"t": torch.arange(6, dtype=torch.float32).view(2, 3), "n": (1, "a", None), "b": torch.tensor([True])}


def current_limit(name: str) -> float:
    from kdcore import limits

    return getattr(limits.current(), name)


def write_to_home_and_caches() -> dict:
    """What a parser library that caches does: a file in the home folder and the temp folder, and the
    places its cache variables name."""
    import tempfile
    from pathlib import Path

    for folder in (Path.home() / ".cache", Path(tempfile.gettempdir())):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "probe").write_text("x")
    names = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "TORCH_HOME", "TORCHINDUCTOR_CACHE_DIR")
    return {
        "home": str(Path.home()),
        "tmp": tempfile.gettempdir(),
        **{name: os.environ.get(name, "") for name in names},
        "telemetry": os.environ.get("ORT_DISABLE_TELEMETRY", ""),
    }


def read_file(path: str) -> str:
    """A reader bug that opens a path the file names: another user's upload, an SSH key."""
    with open(path) as f:
        return f.read()


def list_folder(path: str) -> list:
    return sorted(os.listdir(path))


def connect(port: int) -> str:
    """A reader bug that calls out over TCP (to 127.0.0.1: a local database, a metadata service)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"hello")
    return "connected"


def send_udp(port: int) -> str:
    """Data out over UDP, as a DNS query would carry it: Landlock's TCP rules do not see it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"hello", ("127.0.0.1", port))
    return "sent"


def temp_file() -> str:
    """What a reader's own temporary file does (torch.export archives, timm checkpoints)."""
    fd, path = tempfile.mkstemp(prefix="reader-")
    os.close(fd)
    return path
