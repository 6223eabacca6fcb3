"""What third-party libraries write or send outside kdcore's run and data directories, and how each is
undone. Found by running `kdcore audit` on a model of each format with HOME and TMPDIR pointed at empty
folders and listing what appeared there (tests/test_third_party.py keeps doing so):

- onnxruntime (1.32, the official wheels) ships Microsoft's 1DS telemetry client, which its native
  library starts when `onnxruntime` is imported: a device identifier and an SQLite event store under
  `~/.cache/Microsoft/DeveloperTools/.onnxruntime/`, a session file in $TMPDIR, and uploads to
  Microsoft. `ORT_DISABLE_TELEMETRY=1` in the environment when the library initialises prevents all
  of it for the process's lifetime (onnxruntime's docs/Privacy.md, "Disabling Telemetry");
  `disable_telemetry_events()` alone comes too late, the identifier is already written. So
  `import_onnxruntime()` is the one way kdcore imports it, only an ONNX model's reader calls it, and
  the entry points switch it off for every process they start (`process_env`).
- torch creates its compile cache folder `$TMPDIR/torchinductor_<user>` when `torch._dynamo` is first
  imported, which building any optimizer does. `TORCHINDUCTOR_CACHE_DIR` moves it: the entry points
  point it into the data directory's cache unless the user already chose a place.
- A sandboxed reader's child (`kdcore.sandbox.child`) gets HOME, the XDG folders, the libraries' cache
  variables and TMPDIR inside its own temporary folder (`sandbox_env`), removed with it: whatever a
  parser library caches goes too, and it never writes where the server's user keeps their files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

TELEMETRY_OFF = {"ORT_DISABLE_TELEMETRY": "1"}


def import_onnxruntime() -> ModuleType:
    """onnxruntime with its telemetry off from its first instruction."""
    # The one os.environ write in the engine: the native library reads the variable from this process's
    # environment when it initialises, at import; no argument or API reaches it earlier.
    os.environ.update(TELEMETRY_OFF)
    import onnxruntime  # heavy: onnxruntime, only for an ONNX model

    onnxruntime.disable_telemetry_events()  # also off where the library was imported before us
    return onnxruntime


def process_env(data_home: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables an entry point (the CLI, `python -m app`) sets for itself and the processes it
    starts: onnxruntime's telemetry off, torch's compile cache in `data_home`'s cache."""
    env = os.environ if environ is None else environ
    inductor = env.get("TORCHINDUCTOR_CACHE_DIR") or str(Path(data_home).resolve() / "cache" / "torchinductor")
    return {**TELEMETRY_OFF, "TORCHINDUCTOR_CACHE_DIR": inductor}


def sandbox_env(folder: Path) -> dict[str, str]:
    """Every home and cache a library may write to, inside a sandboxed child's temporary `folder`."""
    cache = folder / ".cache"
    places = {
        "HOME": folder,
        "TMPDIR": folder,
        "XDG_CACHE_HOME": cache,
        "XDG_CONFIG_HOME": folder / ".config",
        "XDG_DATA_HOME": folder / ".local" / "share",
        "XDG_STATE_HOME": folder / ".local" / "state",
        "TORCH_HOME": cache / "torch",
        "TORCHINDUCTOR_CACHE_DIR": cache / "torchinductor",
        "TRITON_CACHE_DIR": cache / "triton",
        "HF_HOME": cache / "huggingface",
        "MPLCONFIGDIR": folder / ".config" / "matplotlib",
    }
    return {**TELEMETRY_OFF, **{name: str(path) for name, path in places.items()}}
