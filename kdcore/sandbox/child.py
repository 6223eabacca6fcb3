"""The child side of `kdcore.sandbox`: the fork server, the limited child, and the readers'
adapters. Runs as `python -m kdcore.sandbox.child serve` (started by the parent on first use)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import pickle
import resource
import select
import shutil
import struct
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch

from kdcore import limits
from kdcore.data.imageset import ImageSet
from kdcore.errors import KDCoreError
from kdcore.models.spec import ModelSpec
from kdcore.sandbox import Budget, confine
from kdcore.third_party import sandbox_env

PRELOAD = [
    "kdcore.sandbox",
    "kdcore.sandbox.child",
    "kdcore.models.loading",
    "kdcore.models.registry",
    "kdcore.data.folders",
]
# ONNX reading (kdcore.models.onnxfile) imports these (onnx2torch ~2.5 s, onnx ~1 s). Measured on 2
# cores: a paper-cnn .onnx spec read takes 0.39 s with the preload, 2.5 s without; the server's own
# start grows from 1.5 to 3.6 s, once per process. Optional: skipped where not installed. Not
# onnxruntime (0.05 s): it is imported only by the child that checks an ONNX model
# (`kdcore.third_party`), so that the server of a .pt audit never loads it.
PRELOAD_OPTIONAL = [
    "onnx",
    "onnx.version_converter",
    "onnx2torch",
    "kdcore.models.onnxfile",
    "kdcore.models.onnxops",
]


def _serve() -> None:
    """The fork server's loop: read `{"work": dir}` lines, fork a child for each and answer its pid;
    reap children and write each one's wait status to `<dir>/exit`. Single-threaded, so that fork
    is safe; torch is imported here but never run, so no thread pool exists to be forked.

    The server's own homes and caches are a temporary folder of its own (importing onnx2torch creates
    torch's compile cache folder), removed when it exits; each child moves them into its `dir`."""
    home = Path(tempfile.mkdtemp(prefix="kdcore-sandbox-server-"))
    try:
        os.environ.update(sandbox_env(home))
        tempfile.tempdir = None
        _preload_and_serve()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _preload_and_serve() -> None:
    for module in PRELOAD:
        importlib.import_module(module)
    for module in PRELOAD_OPTIONAL:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    children: dict[int, str] = {}
    buf = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.02)
        if ready:
            chunk = os.read(0, 65536)
            if not chunk:
                return  # the parent closed our stdin: it is gone
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                work = json.loads(line)["work"]
                pid = os.fork()
                if pid == 0:
                    _child(work)  # never returns
                children[pid] = work
                os.write(1, f"{pid}\n".encode())
        while children:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                break
            work = children.pop(pid, None)
            if work is not None and os.path.isdir(work):
                with contextlib.suppress(OSError):
                    part = os.path.join(work, "exit.part")
                    cpu = usage.ru_utime + usage.ru_stime
                    Path(part).write_text(f"{status} {usage.ru_maxrss} {cpu:.3f}")  # maxrss in KiB
                    os.replace(part, os.path.join(work, "exit"))


def _child(work: str) -> None:
    """The child's whole life: own group, limits, quiet, imports, confinement, call, answer. Always
    ends with os._exit."""
    try:
        os.setpgid(0, 0)
        os.chdir(work)
        os.environ.update(sandbox_env(Path(work)))  # a throw-away process: its homes and caches go with `work`
        target, args, kwargs, budget, lim, inputs = pickle.loads(Path("request.pkl").read_bytes())
        limits.use(limits.Limits(**lim))  # the readers check the parent's limits, --limit included
        _limit_self(Budget(**budget))
        for fd, name in ((0, os.devnull), (1, "stdout.txt"), (2, "stderr.txt")):
            out = os.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600) if fd else os.open(name, os.O_RDONLY)
            os.dup2(out, fd)  # also drops the server's request and answer pipes
            os.close(out)
        torch.set_num_threads(1)
        tempfile.tempdir = work  # a reader's temporary files (.pt2, timm archives) stay in the one folder it may write
    except BaseException:
        os._exit(2)
    try:
        module, _, func = target.partition(":")
        reader = getattr(importlib.import_module(module), func)  # imported before the file system closes
    except BaseException:
        reader = None
        answer = {"status": "bug", "traceback": traceback.format_exc()}
    if reader is not None:
        try:
            confined = confine.confine(inputs, work)
        except BaseException:
            os._exit(confine.FAILED_EXIT)  # the kernel offers it, so reading without it would be a silent hole
        answer = _call(reader, args, kwargs, confined)
    try:
        Path("answer.part").write_text(json.dumps(answer), encoding="utf-8")
        os.replace("answer.part", "answer.json")
    except BaseException:
        os._exit(3)
    os._exit(0)


def _call(reader: Any, args: tuple, kwargs: dict, confined: confine.Confinement) -> dict:
    """The reader's answer: its value (encoded), or how it failed."""
    try:
        value = reader(*args, **kwargs)
        tensors: dict[str, torch.Tensor] = {}
        encoded = _encode(value, tensors)
        if tensors:
            _write_safetensors(Path("tensors.safetensors"), tensors)
        return {"status": "ok", "value": encoded, "tensors": bool(tensors)}
    except BaseException as e:
        if _is_memory(e):
            return {"status": "memory"}
        if isinstance(e, KDCoreError):
            details = getattr(e, "details", {})
            return {"status": "error", "class": type(e).__name__, "message": str(e), "details": details}
        refused = _refused(e, confined)
        if refused:
            return {"status": "refused", "kind": refused}
        return {"status": "bug", "traceback": traceback.format_exc()}


def _refused(e: BaseException | None, confined: confine.Confinement) -> str:
    """The kind of access the confinement refused ("file" or "network") if a PermissionError it
    raised is anywhere in the chain; else "". Without the confinement it is an ordinary error."""
    for _ in range(20):
        if e is None:
            return ""
        if isinstance(e, PermissionError):
            kind = "file" if e.filename is not None else "network"
            if confined.files if kind == "file" else confined.network:
                return kind
        e = e.__cause__ or e.__context__
    return ""


def _limit_self(b: Budget) -> None:
    vm = _vm_size()
    resource.setrlimit(resource.RLIMIT_AS, (vm + b.memory_bytes, vm + b.memory_bytes))
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = math.ceil(used.ru_utime + used.ru_stime + b.cpu_s)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 2))  # SIGXCPU at the soft limit, SIGKILL 2 s later
    resource.setrlimit(resource.RLIMIT_FSIZE, (b.memory_bytes, b.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _is_memory(e: BaseException | None) -> bool:
    """MemoryError, or torch's allocator failure, anywhere in the chain of causes."""
    for _ in range(20):
        if e is None:
            return False
        text = str(e) if isinstance(e, RuntimeError) else ""
        if isinstance(e, MemoryError) or "can't allocate memory" in text or "not enough memory" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def _encode(v: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = v.detach().cpu()
        return {"tensor": key}
    if isinstance(v, ModelSpec):
        return {"ModelSpec": _encode(v.to_dict(), tensors)}
    if isinstance(v, ImageSet):
        return {"ImageSet": _encode({f.name: getattr(v, f.name) for f in dataclasses.fields(v)}, tensors)}
    if isinstance(v, list):
        return [_encode(x, tensors) for x in v]
    if isinstance(v, tuple):
        return {"tuple": [_encode(x, tensors) for x in v]}
    if isinstance(v, dict):
        return {"dict": [[str(k), _encode(x, tensors)] for k, x in v.items()]}
    raise TypeError(f"a sandboxed reader returned a {type(v).__name__}, which the sandbox cannot send back")


_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The safetensors format (8-byte header length, JSON header, raw little-endian data) written
    tensor by tensor, so a multi-GB image set is not copied once more in memory."""
    header: dict[str, Any] = {}
    flat, offset = [], 0
    for key, t in tensors.items():
        b = t.contiguous().reshape(-1).view(torch.uint8)  # (nbytes,)
        header[key] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + b.numel()]}
        flat.append(b)
        offset += b.numel()
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in flat:
            f.write(memoryview(b.numpy()))


def read_spec(path: str, input_shape: tuple[int, int, int] | None = None) -> ModelSpec | None:
    from kdcore.models.loading import read_spec as read  # the child imports only its task's reader

    return read(path, input_shape=input_shape)


def load_model_state(path: str, spec: dict | None) -> tuple[dict[str, torch.Tensor], ModelSpec]:
    from kdcore.models.loading import load_model as load  # the child imports only its task's reader

    model, got = load(path, ModelSpec.from_dict(spec) if spec is not None else None, "cpu")
    return dict(model.state_dict()), got


def check_model(path: str, spec: dict | None, trust: bool = False) -> tuple[ModelSpec, int, dict]:
    """(spec, parameter count, `layer_report`) of the loaded model: plain values for the JSON answer.

    `trust`: the parent allows running an architecture's Python file (`file:<Class>`); this
    throw-away process then allows it too, whatever environment the fork server started with."""
    from kdcore.models import plugins  # the child imports only its task's reader
    from kdcore.models.layers import layer_report  # the child imports only its task's reader
    from kdcore.models.loading import load_model as load  # the child imports only its task's reader

    if trust:
        plugins.trust_code()
    model, got = load(path, ModelSpec.from_dict(spec) if spec is not None else None, "cpu")
    return got, sum(p.numel() for p in model.parameters()), layer_report(model, got)


def decode_image(data: bytes, input_shape: tuple[int, int, int], name: str) -> torch.Tensor:
    from kdcore.data.folders import decode_image as decode  # the child imports only its task's reader

    return decode(data, input_shape, name)


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        _serve()
    elif len(sys.argv) == 3 and sys.argv[1] == "child":  # one child without the server (timing, debugging)
        _child(sys.argv[2])
