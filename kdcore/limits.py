"""Every budget that guards kdcore against hostile uploads, and each user's quotas, with its default, in one place.

kdaudit opens files from people its user does not trust: model files, image archives, image
folders, single images, spec JSON. Each reader checks these budgets *while* it reads (counting the
bytes it actually decompresses, the elements it is about to allocate, the nesting it has seen),
never from a header that the file itself declares. On top of that, untrusted parsing runs in a
short-lived subprocess (`kdcore.sandbox`) under the sandbox_* limits, so a reader bug that still
blows up costs that process, not the dashboard.

Each limit can be changed without code:
    environment   KDAUDIT_LIMIT_<NAME>=<value>      e.g. KDAUDIT_LIMIT_MAX_ARCHIVE_BYTES=8GiB
    CLI           --limit NAME=VALUE (repeatable)   e.g. kdcore audit ... --limit max_image_pixels=1e8
Byte sizes accept the suffixes KiB, MiB, GiB (and kB, MB, GB).

`current()` is what every reader uses; `use(limits)` sets it for the process (the CLI does, from
its flags); a process that starts another passes `to_env()` in the child's environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from kdcore.config import setting
from kdcore.errors import ConfigError

ENV_PREFIX = "KDAUDIT_LIMIT_"
_KiB, _MiB, _GiB = 2**10, 2**20, 2**30
_UNITS = {"": 1, "b": 1, "kib": _KiB, "mib": _MiB, "gib": _GiB, "kb": 10**3, "mb": 10**6, "gb": 10**9}


@dataclass(frozen=True)
class Limits:
    """Budgets for reading untrusted input. Sizes are bytes, times are seconds."""

    # Images and archives
    max_file_bytes: int = setting(64 * _MiB, "bytes of one image file or archive member, as actually read", min=1)
    max_archive_bytes: int = setting(4 * _GiB, "bytes decompressed from one archive in total", min=1)
    max_archive_entries: int = setting(500_000, "entries in one archive (files and folders)", min=1)
    max_image_pixels: int = setting(50_000_000, "pixels of one image (width × height), checked before decoding", min=1)
    max_dataset_bytes: int = setting(4 * _GiB, "bytes of one decoded image set (N × C × H × W uint8)", min=1)
    # Models and specs
    max_model_file_bytes: int = setting(4 * _GiB, "bytes of one model file", min=1)
    max_tensor_elements: int = setting(1_000_000_000, "elements in all tensors of one model file together", min=1)
    max_pickle_bytes: int = setting(64 * _MiB, "bytes of a pickle stream (a .pt's data.pkl) before it is parsed", min=1)
    max_nesting: int = setting(100, "nesting depth of containers in a pickle or a spec JSON", min=1)
    max_num_classes: int = setting(100_000, "classes a model spec may declare", min=1)
    max_input_pixels: int = setting(4096 * 4096, "H × W of a model's input that a spec may declare", min=1)
    # The parsing subprocess (kdcore.sandbox)
    sandbox_memory_bytes: int = setting(1_400 * _MiB, "memory a parsing subprocess may take above its start", min=1)
    sandbox_cpu_s: int = setting(20, "CPU seconds a parsing subprocess may use", min=1)
    sandbox_timeout_s: float = setting(25.0, "wall-clock seconds before a parsing subprocess is killed", min=1)
    # The dashboard (`python -m app` passes it as Streamlit's server.maxUploadSize, in whole MiB, at least 1)
    max_upload_bytes: int = setting(1 * _GiB, "bytes of one file uploaded through the dashboard", min=1)
    # Jobs (kdcore.jobs.worker): wall-clock seconds after which the worker stops a job as failed
    job_timeout_demo_s: float = setting(3_600.0, "seconds a demo job may run", min=1)
    job_timeout_audit_s: float = setting(6 * 3_600.0, "seconds an audit job may run", min=1)
    job_timeout_sweep_s: float = setting(24 * 3_600.0, "seconds a sweep job may run", min=1)
    job_timeout_defend_s: float = setting(3 * 3_600.0, "seconds a defend job may run", min=1)
    job_timeout_refine_s: float = setting(3_600.0, "seconds a refine job may run", min=1)
    job_timeout_audit_many_s: float = setting(
        24 * 3_600.0, "seconds an audit of many models may run in one job (its parts: each an audit's)", min=1
    )
    # Per user of a shared server (kdcore.jobs.quotas), checked before anything is stored or queued
    quota_jobs: int = setting(20, "jobs one user may have queued or running at once (a fan-out counts once)", min=1)
    quota_upload_bytes: int = setting(20 * _GiB, "bytes of uploads one user may keep in the data directory", min=1)

    def to_env(self) -> dict[str, str]:
        """The non-default limits as environment variables, for a child process."""
        default = Limits()
        return {
            ENV_PREFIX + f.name.upper(): str(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


def parse_value(name: str, text: str) -> int | float:
    """'2GiB' → 2147483648, '1e8' → 100000000, '25' → 25 (float for the *_s limits)."""
    fields = {f.name: f for f in dataclasses.fields(Limits)}
    if name not in fields:
        raise ConfigError(f"Unknown limit {name!r}; the limits are: {', '.join(fields)}")
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    unit = _UNITS.get(m.group(2).lower()) if m else None
    try:
        value = float(m.group(1)) * unit if m and unit else float("nan")
    except ValueError:
        value = float("nan")
    if not value == value or value <= 0 or value == float("inf"):
        raise ConfigError(f"Limit {name} must be a positive number (bytes may end in KiB, MiB or GiB); got {text!r}")
    return value if fields[name].type in (float, "float") else int(value)


def from_env(environ: dict[str, str] | None = None) -> Limits:
    env = os.environ if environ is None else environ
    values = {}
    for f in dataclasses.fields(Limits):
        text = env.get(ENV_PREFIX + f.name.upper())
        if text is not None:
            values[f.name] = parse_value(f.name, text)
    return Limits(**values)


def with_overrides(base: Limits, pairs: list[str] | tuple[str, ...]) -> Limits:
    """Apply 'name=value' strings (the CLI's --limit) on top of `base`."""
    values = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise ConfigError(f"--limit takes NAME=VALUE, e.g. max_archive_bytes=8GiB; got {pair!r}")
        values[name.strip()] = parse_value(name.strip(), text)
    return dataclasses.replace(base, **values)


_current: Limits | None = None


def current() -> Limits:
    """The limits in force in this process: set by `use`, else read from the environment once."""
    global _current
    if _current is None:
        _current = from_env()
    return _current


def use(limits: Limits) -> None:
    """Set the limits for this process. Subprocesses get them through `to_env()` in their environment
    (kdcore never writes its own os.environ)."""
    global _current
    _current = limits
