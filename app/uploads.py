"""Uploaded files → the data directory, and the immediate checks of the New-audit page (model, image sets).

Uploads are stored by content hash (`uploads/<sha256[:16]>/<safe name>`), so uploading the same
file twice reuses it and an audit's inputs never change under it. Each is charged to the user's upload
quota before it is written (`Access.keep_upload`): over quota, nothing is stored. The Streamlit process only
writes an upload's bytes to disk: reading it (unpickling, unzipping, decoding) happens in
`kdcore.sandbox`'s limited child processes, so a hostile file costs that process, not the server.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app.state import access, show_error, store
from kdcore import sandbox
from kdcore.data.folders import IMAGE_EXTENSIONS
from kdcore.data.summary import ImageSetSummary
from kdcore.errors import InputError, KDCoreError
from kdcore.models.spec import ModelSpec
from kdcore.sandbox import image_summary

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    base = Path(name.replace("\\", "/")).name
    cleaned = _SAFE.sub("_", base).strip("._") or "upload"
    return cleaned[:120]


def save_upload(data: bytes, name: str, full_hash: bool = False) -> Path:
    """`uploads/<sha256[:16]>/<safe name>`; with `full_hash` the folder is the whole SHA-256, so the
    path itself names the content (an architecture's Python file, whose path goes into a job's config)."""
    digest = hashlib.sha256(data).hexdigest()
    digest = digest if full_hash else digest[:16]
    path = store().data_dir / "uploads" / digest / safe_name(name)
    _kept(path, len(data), lambda tmp: tmp.write_bytes(data))
    return path


def _kept(path: Path, nbytes: int, write) -> None:
    """Charge the user for `path` (QuotaError: nothing written), then `write(tmp)` and move it into place
    unless the file is there already (the same content, uploaded before)."""
    charged = access().keep_upload(path, nbytes)
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        write(tmp)
        tmp.replace(path)
    except BaseException:
        if charged:
            access().forget_upload(path)
        raise


def upload_ui(up) -> Path | None:
    """A file uploader's file stored (`save_upload`), or None with the reason shown (e.g. over quota)."""
    if up is None:
        return None
    try:
        return save_upload(up.getvalue(), up.name)
    except KDCoreError as e:
        show_error(e)
        return None


def save_image_set(files: list) -> Path:
    """One zip → that zip; several images → a zip of them (flat), so every set is a single path."""
    if not files:
        raise InputError("No files were uploaded")
    if len(files) == 1 and files[0].name.lower().endswith(".zip"):
        return save_upload(files[0].getvalue(), files[0].name)
    zips = [f.name for f in files if f.name.lower().endswith(".zip")]
    if zips:
        raise InputError(f"Upload one .zip archive or many image files, not both ({', '.join(zips[:3])})")
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        h.update(f.name.encode())
        h.update(f.getvalue())
    path = store().data_dir / "uploads" / h.hexdigest()[:16] / "images.zip"

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            seen: set[str] = set()
            for f in files:
                n = safe_name(f.name)
                while n in seen:
                    n = "_" + n
                seen.add(n)
                z.writestr(n, f.getvalue())

    _kept(path, sum(len(f.getvalue()) for f in files), write)  # stored, so the zip is about their sum
    return path


# What the model uploader takes: state_dicts, and files that carry their own architecture
MODEL_TYPES = ["safetensors", "pt", "pth", "bin", "ckpt", "onnx", "pt2", "zip"]


@dataclass(frozen=True)
class ModelCheck:
    spec: ModelSpec
    parameters: int
    output_classes: int
    layers: dict  # kdcore.models.layers.layer_report: candidates per role, the choice, problems
    sandbox_note: str = ""  # what the parsing sandbox could not restrict on this kernel ("" = files and network)


@st.cache_resource(max_entries=32, show_spinner="Loading the model and running a test batch…")
def check_model(path: str, spec_json: str | None) -> ModelCheck:
    """Load the file in a sandbox, build the architecture, run a dummy batch, list the layers the
    methods would use. Raises KDCoreError.

    Keyed by the upload's path, which is its content hash, and the spec: checking the same file
    again is instant. A refused file raises, and Streamlit does not cache exceptions.
    """
    spec = ModelSpec.from_json(spec_json) if spec_json else None
    spec, parameters, layers = sandbox.check_model(path, spec)
    return ModelCheck(spec, parameters, spec.num_classes, layers, sandbox.confinement().note)


@st.cache_resource(max_entries=32, show_spinner=False)
def stored_spec(path: str, input_shape: tuple[int, int, int] | None = None) -> ModelSpec | None:
    """The spec the uploaded file carries (None when it carries none), read in a sandbox; `input_shape`
    for a graph whose height and width are symbolic (an ONNX export with dynamic axes).
    Raises KDCoreError for a file that is malformed, hostile or not readable in the sandbox's limits."""
    return sandbox.read_spec(path, input_shape=input_shape)


def image_types() -> list[str]:
    return [e.lstrip(".") for e in IMAGE_EXTENSIONS]


@st.cache_resource(max_entries=64, show_spinner="Reading the image set…")
def image_summary_of(path: str) -> ImageSetSummary:
    """What an uploaded zip holds (images, class folders, sizes, skipped files), read in a sandbox.
    Keyed by the upload's path, which is its content hash. Raises KDCoreError (not cached)."""
    return image_summary.summarize(path)
