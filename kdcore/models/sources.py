"""The file an architecture is defined by (a spec's `source`): where it is, and that it is unchanged.

`onnx`, `pt2` and `file:<Class>` architectures are built from a file, not a name. The spec names
that file and its SHA-256; `source_path` finds it (a relative name is relative to the model file
the spec travels with) and refuses it when it is gone or its content changed since the spec was
written: a student must be built from exactly the graph its teacher was read from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdcore.errors import ConfigError
from kdcore.io import file_sha256
from kdcore.models.spec import ModelSpec


def with_source(spec: ModelSpec, path: str | Path) -> ModelSpec:
    """`spec` with `path` (made absolute) as its source and the file's current SHA-256."""
    path = Path(path).resolve()
    return spec.replace(source=str(path), source_sha256=file_sha256(path))


def source_path(spec: ModelSpec) -> Path:
    """The spec's source file, checked against its SHA-256; ConfigError if missing or changed."""
    if not spec.source:
        raise ConfigError(f"A {spec.arch} architecture is defined by a file, but this spec names none (source)")
    path = Path(spec.source)
    if not path.is_file():
        raise ConfigError(
            f"The {spec.arch} architecture is defined by {path}, which does not exist any more; "
            "give the original file again"
        )
    if file_sha256(path) != spec.source_sha256:
        raise ConfigError(
            f"{path.name} changed since this model was read from it (its SHA-256 differs), so the architecture "
            "cannot be rebuilt as it was; give the original file again"
        )
    return path


def resolved(spec: ModelSpec, base: Path) -> ModelSpec:
    """`spec` with a relative source made absolute against `base` (the model file's folder)."""
    if spec.source and not Path(spec.source).is_absolute():
        return spec.replace(source=str((base / spec.source).resolve()))
    return spec


def copy_beside(spec: ModelSpec, model_path: Path) -> ModelSpec:
    """Copy the source next to `model_path` (as `<stem>.source<suffix>`) and point the spec at it
    by its relative name, so a saved model and its architecture travel together."""
    if not spec.source:
        return spec
    src = source_path(spec)
    dst = model_path.with_name(f"{model_path.stem}.source{src.suffix}")
    if src.resolve() != dst.resolve():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".part")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    return spec.replace(source=dst.name)
