"""What a sandbox child may touch: its inputs, its temp folder and Python itself; no network.

The budgets (`.runner.Budget`) bound what a hostile file can make a reader spend; this bounds what a
reader bug that runs the file's code could reach. A child that reads an upload must not read the
server user's files (other uploads, SSH keys, the job store), write outside its temp folder, or
call out. Two kernel features, both unprivileged, applied by the child to itself after its imports
and before it touches the input (`confine`), and irreversible for it:

1. Landlock (`py_landlock`; kernel >= 5.13, ABI 1; TCP rules from ABI 4, kernel >= 6.7; abstract
   UNIX sockets and signals scoped from ABI 6, kernel >= 6.12). Every file access right the kernel
   knows is handled, and only these are granted: read (files and folders) on the inputs and on what
   Python needs to import a module it had not yet imported (`_python_paths`: the interpreter's
   prefix, the venv's site-packages, kdcore itself, the packages and modules of the path's other
   folders but no data folder beside them, the system libraries), read and write on the temp
   folder, read and write on /dev/null. TCP bind and connect are handled with no port granted.
2. A seccomp filter (`pyseccomp` over the system's libseccomp): `socket()` fails with EACCES for
   every address family, and `io_uring_setup` too (io_uring can open and connect sockets itself).
   This also closes what Landlock does not cover: UDP (a DNS query can carry data out), raw sockets,
   and connecting to a UNIX socket file (a container runtime's, a database's).

A refused open or connect raises PermissionError in the child; the child answers it as a refusal
(`.child`), and the parent raises the reader's own error class: "it tried to open a file outside
its upload" rather than a traceback.

Degrade, don't fail: on a kernel without Landlock (or without its TCP rules), or without libseccomp,
the child reads with what is there, and `available()` says what is missing in plain words (`note`),
which the job log and the dashboard's model check repeat. Both the parent and the child ask the same
kernel (`available()`), so the parent reports what the child applied: a child for which a feature
the kernel offers fails to apply exits without reading the file (`.child`, exit code 4).
"""

from __future__ import annotations

import errno
import functools
import os
import site
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import py_landlock
from py_landlock import AccessFs, Landlock

import kdcore

try:  # the Python side is a pinned requirement; the C library it loads is the system's (libseccomp2)
    import pyseccomp
except (ImportError, OSError, RuntimeError):  # RuntimeError: "Unable to find libseccomp"
    pyseccomp = None

_READ = AccessFs.READ_FILE | AccessFs.READ_DIR
_READ_FILE = AccessFs.READ_FILE
_WRITE = (
    AccessFs.WRITE_FILE | AccessFs.TRUNCATE | AccessFs.MAKE_REG | AccessFs.MAKE_DIR | AccessFs.REMOVE_FILE
    | AccessFs.REMOVE_DIR
)  # fmt: skip
FAILED_EXIT = 4  # the child's exit code when `confine` failed to apply what the kernel offers
_NET_ABI = 4  # Landlock's TCP bind/connect rules
# The system's shared libraries, for a library loaded late (dlopen by name reads ld.so.cache). Tried:
# every reader's tests pass with Python's own folders alone (`_python_paths`), the interpreter and its
# libraries being open already; these are public, read-only files. Not /proc/self (the child reads its
# /proc/self/status for its limits before it confines itself) and not /dev/urandom (Python uses getrandom).
_SYSTEM = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/etc/ld.so.cache")
_IMPORTABLE = (".py", ".pyc", ".so", ".pth", ".dist-info", ".egg-info", ".egg-link")


@dataclass(frozen=True)
class Confinement:
    """What a sandbox child on this kernel is kept from: files outside its own, the network."""

    files: bool  # reads only its inputs and Python, writes only its temp folder (Landlock)
    network: bool  # opens no socket (seccomp), or at least no TCP connection (Landlock ABI >= 4)
    landlock_abi: int  # 0: none

    @property
    def note(self) -> str:
        """'' when both hold; else what is missing, in words for the log and the dashboard."""
        missing = " and ".join(w for w, ok in (("file", self.files), ("network", self.network)) if not ok)
        if not missing:
            return ""
        return (
            f"the parsing sandbox could not restrict {missing} access on this kernel, so a reader bug could "
            "reach what the server's user can; uploads are still read in a separate, limited process. "
            "Linux 6.7 or newer with Landlock enabled restricts both"
        )

    @property
    def summary(self) -> str:
        """One phrase for the sandbox's log line."""
        return "file and network access restricted" if not self.note else self.note


@functools.cache
def available() -> Confinement:
    """What this kernel lets a child apply (the same answer in the parent and in its children)."""
    try:
        abi = int(py_landlock.get_abi_version())
    except py_landlock.LandlockError:  # not built in, or disabled at boot
        abi = 0
    return Confinement(files=abi >= 1, network=_seccomp_ok() or abi >= _NET_ABI, landlock_abi=abi)


def _seccomp_ok() -> bool:
    if pyseccomp is None:
        return False
    try:
        return pyseccomp.get_api() >= 1  # the kernel's seccomp filters, as libseccomp found them
    except OSError:
        return False


def confine(inputs: Iterable[str], work: str) -> Confinement:
    """Apply `available()` to this process: read `inputs` and Python, read and write `work`, no
    sockets. Raises (OSError, LandlockError) if a feature the kernel offers could not be applied."""
    got = available()
    if got.files:
        rules = Landlock(strict=False)  # best effort: the rights this ABI knows, all of them handled
        for path in {*_python_paths(), *inputs}:  # a path that does not exist needs no rule
            if os.path.exists(path):
                rules.add_path_rule(path, access=_READ if os.path.isdir(path) else _READ_FILE)
        rules.add_path_rule(work, access=_READ | _WRITE)
        rules.add_path_rule(os.devnull, access=AccessFs.READ_FILE | AccessFs.WRITE_FILE)
        rules.apply()  # sets no_new_privs; TCP bind/connect handled with no port allowed (ABI >= 4)
    if pyseccomp is not None and _seccomp_ok():
        f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        for call in ("socket", "io_uring_setup"):
            f.add_rule(pyseccomp.ERRNO(errno.EACCES), call)
        f.load()
    return got


def _python_paths() -> list[str]:
    """What a late import needs: the interpreter's stdlib, the venv, every site-packages folder on the
    path, kdcore's package, the importable entries of the path's other folders (`_importable`: the
    repository kdcore runs from, a PYTHONPATH plugin), and the system's shared libraries."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), *_SYSTEM]
    paths.append(os.path.dirname(kdcore.__file__))  # also when an editable install's finder, not the path, finds it
    for entry in filter(None, sys.path):
        if entry.endswith(("site-packages", "dist-packages")) or os.path.isfile(entry):
            paths.append(entry)  # a whole installation folder, or a zip of modules
        elif os.path.isdir(entry):
            paths.extend(_importable(entry))
    return [str(Path(p).resolve()) for p in paths]


def _importable(folder: str) -> list[str]:
    """The packages, modules and distribution metadata in a folder: not the data folder, uploads or
    runs that may sit beside them (`./kdaudit-data` in the repository kdcore runs from)."""
    found = []
    for e in os.scandir(folder):
        if e.name.endswith(_IMPORTABLE) or (e.is_dir() and os.path.isfile(os.path.join(e.path, "__init__.py"))):
            found.append(e.path)
    return found
