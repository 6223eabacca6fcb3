"""Reading a PyTorch pickle file (.pt/.pth/.bin/.ckpt) with `torch.load(weights_only=True)`, safely.

Steps 3 and 4 of the policy in `kdcore.models.loading`, in the order they run:

1. Recognise the file from its first bytes, as torch.load does: a zip (starts with `PK\\x03\\x04`)
   or a pickle of protocol 2-5 (starts with `\\x80`). A tar archive (torch's own pre-2018
   format, which torch would unpack to a temporary folder) and anything else (text, an image,
   HDF5, ONNX, a safetensors file with the wrong extension, random bytes) is refused with what it
   looks like.
2. A zip is opened through `kdcore.archive` (entry count, names unique ignoring case as torch's
   lookup does, stored/deflate only, no overlapping entries, stored sizes honest). TorchScript
   archives (`constants.pkl`, `code/`) are refused. The `data.pkl` in the folder of the first
   entry (where torch looks) is decompressed with its real bytes counted (`max_pickle_bytes`);
   tensor records that are compressed (torch.save never compresses them) are decompressed once
   to check that they hold what they declare, since torch allocates the declared size.
3. The pickle stream is walked by `kdcore.models.pickle_scan` (nesting, size, allocations).
4. Only then `torch.load(path, weights_only=True)`. What it still refuses (a global outside its
   allow-list) is reported in our words; torch's own message suggests retrying with the unsafe
   mode, so it is never passed on.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import torch

from kdcore.archive import open_zip
from kdcore.errors import InputError, ModelLoadError
from kdcore.limits import Limits
from kdcore.models.pickle_scan import LEGACY_MAGIC, PickleRefused, PickleScan, UnsupportedPickle

UPLOAD_HINT = (
    "Upload weights only: best a .safetensors file made with "
    "`safetensors.torch.save_file(model.state_dict(), 'model.safetensors')`, or a state_dict saved "
    "with `torch.save(model.state_dict(), 'model.pt')`"
)
_PICKLED_OBJECT = "Pickles can run arbitrary code when loaded, so it was not loaded."
WHOLE_MODEL_HINT = (
    "To audit a whole model (its architecture too), save it in a format that carries the graph as data: "
    "ONNX (`torch.onnx.export(model.eval(), torch.zeros(1, C, H, W), 'model.onnx', dynamo=False)`), or a "
    "torch.export archive (`torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, C, H, W),)), "
    "'model.pt2')`); or save its weights (`safetensors.torch.save_file(model.state_dict(), 'model.safetensors')`) "
    "and name the architecture: a timm name (`timm:resnet18`), an installed plugin (entry point "
    "`kdaudit.architectures`), or its class in a Python file (`--arch-file model.py:MyNet --trust-code`)"
)
_HEAD = 512


def torch_load_weights_only(path: Path, lim: Limits) -> object:
    """The object in a torch.save file, after the checks above; raises ModelLoadError."""
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    scan = PickleScan(lim)
    if head[:4] == b"PK\x03\x04":
        _check_pickle(scan, _checked_zip(path, lim), path, lim, legacy=False)
    elif head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5 and not _is_tar(head):
        with open(path, "rb") as f:
            stream = f.read(lim.max_pickle_bytes + 1)
        _check_pickle(scan, stream, path, lim, legacy=True)
    else:
        what = _describe(head)
        raise ModelLoadError(f"{path.name} is not a readable PyTorch file: it looks like {what}. {UPLOAD_HINT}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # KeyError, EOFError, RuntimeError, ...: any failure is the file's
        found = re.search(r"GLOBAL\s+([\w.]+)", str(e))  # the first global the safe unpickler refused
        if found:
            raise ModelLoadError(
                f"{path.name} is a pickled object (it references `{found.group(1)}`), not a plain state_dict "
                f"of tensors. {_PICKLED_OBJECT} {WHOLE_MODEL_HINT}"
            ) from e
        raise ModelLoadError(f"{path.name} is not a readable PyTorch file ({_reason(e)}). {UPLOAD_HINT}") from e


def _checked_zip(path: Path, lim: Limits) -> bytes:
    """Check a torch.save zip; return its data.pkl."""
    try:
        with open_zip(path, label=path.name, casefold_names=True) as z:
            names = [m.name for m in z.members]
            if any(n.split("/", 1)[-1] == "constants.pkl" or n.split("/", 1)[-1].startswith("code/") for n in names):
                raise ModelLoadError(
                    f"{path.name} is a TorchScript archive (torch.jit.save output). TorchScript archives "
                    f"contain code that would run on load, so it was not loaded. {WHOLE_MODEL_HINT}"
                )
            folder = names[0].split("/", 1)[0] if names and "/" in names[0] else None  # no entries: no folder
            pkl = next((m for m in z.members if folder and m.name.casefold() == f"{folder}/data.pkl".casefold()), None)
            if pkl is None:
                raise ModelLoadError(
                    f"{path.name} is a zip archive but not a torch.save file (no data.pkl in the folder of its "
                    f"first entry; found {', '.join(map(repr, names[:5]))}{' …' if len(names) > 5 else ''}). "
                    + UPLOAD_HINT
                )
            data = z.read(pkl, lim.max_pickle_bytes, "max_pickle_bytes")
            for m in z.members:
                if m.compressed and m is not pkl:
                    z.verify(m, lim.max_model_file_bytes, "max_model_file_bytes")
            return data
    except ModelLoadError:
        raise
    except InputError as e:
        raise ModelLoadError(f"{path.name} was refused: {e}. {UPLOAD_HINT}") from e


def _check_pickle(scan: PickleScan, data: bytes, path: Path, lim: Limits, legacy: bool) -> None:
    """One pickle (data.pkl), or the five of the pre-zip format: magic, version, info, object, keys."""
    try:
        pos, first = scan.scan(data)
        if legacy and first == LEGACY_MAGIC:
            for _ in range(4):
                pos, _ = scan.scan(data, pos)
    except UnsupportedPickle as e:
        raise ModelLoadError(
            f"{path.name} is a pickled object, not a plain state_dict of tensors (it uses the pickle {e}, which "
            f"torch.save never writes). {_PICKLED_OBJECT} {WHOLE_MODEL_HINT}"
        ) from e
    except PickleRefused as e:
        if legacy and len(data) > lim.max_pickle_bytes and "truncated" in str(e):
            e = PickleRefused(f"its pickle stream is longer than {lim.max_pickle_bytes:,} bytes (max_pickle_bytes)")
        raise ModelLoadError(f"{path.name} was refused before unpickling: {e}. {UPLOAD_HINT}") from e


def _is_tar(head: bytes) -> bool:
    """What tarfile.open (which torch tries on every non-zip file) would accept as a tar header."""
    if len(head) < _HEAD:
        return False
    try:
        tarfile.TarInfo.frombuf(head[:_HEAD], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _describe(head: bytes) -> str:
    """What a file that is not a torch.save file looks like, from its first bytes."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:4] == b"GIF8":
        return "an image, not a model"
    if head[:4] == b"\x89HDF":
        return "an HDF5 file (Keras/TensorFlow); convert the model to PyTorch first"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * 2**20:
        return "a safetensors file; give it the .safetensors extension"
    if _is_tar(head):
        return "a tar archive (torch's format from before 2018 is not read); re-save it with a current torch"
    if head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head.lower()):
        return "an ONNX model; export the weights of the PyTorch model instead"
    if head[:2] == b"\x1f\x8b":
        return "a gzip file; unpack it first"
    text = head.decode("utf-8", errors="replace")
    if text and sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * len(text):
        return f"a text file (it starts with {text[:40]!r})"
    if head[:1] == b"\x80":
        return f"a pickle of protocol {head[1] if len(head) > 1 else '?'} that torch.save does not write"
    return "binary data that is neither a torch.save zip nor a pickle"


def _reason(e: Exception) -> str:
    """One line of torch's error, without its advice to load in the unsafe mode."""
    text = str(e)
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    line = found.group(1) if found else (text.strip().splitlines() or [""])[0]
    if not line or "weights_only" in line.lower() or "weights only" in line.lower():
        line = "the safe unpickler refused it"
    return f"{type(e).__name__}: {line[:200]}"
