"""timm architectures by name (`timm:<name>`), and Hugging Face-style timm model folders and zips.

`build(spec)` gives `timm.create_model(name, pretrained=False, num_classes=..., in_chans=C, **extra)`,
plus `img_size=(H, W)` for models whose input size is fixed (ViTs and their kin: their position
embeddings are sized for it) when the spec's differs from timm's default. Nothing is downloaded:
pretrained weights are never asked for, and the options that could point timm at a file or the
hub (`pretrained_cfg`, `checkpoint_path`, ...) are refused. The model is first built on the meta
device (`kdcore.models.registry.probe_size`): a name or options from an upload cannot allocate
more than `max_tensor_elements` weights. An unknown name is a ConfigError with the close matches.

A model folder or zip in timm's own hub format (what `timm.models.save_for_hf` writes, checked
against timm 1.0's `timm/models/_hub.py`, `save_config_for_hf` and `_parse_model_cfg`):

    config.json        {"architecture": "resnet18", "num_classes": 10, "label_names": [...],
                        "model_args": {"in_chans": 1, "img_size": [28, 28], ...},
                        "pretrained_cfg": {"input_size": [C, H, W], "mean": [...], "std": [...]}}
                       (older exports put everything in one dict, `labels` for `label_names`)
    model.safetensors  the weights (preferred), or
    pytorch_model.bin  a state_dict read with torch.load(weights_only=True) (`kdcore.models.torchfile`)

`read_spec` turns config.json into a ModelSpec (arch `timm:<architecture>`, the model_args as
`extra` options); `read_state_dict` reads the weights through `kdcore.models.loading`'s guarded
readers. A zip may hold these files at its top or in one top folder; it is read through
`kdcore.archive`'s checked zip, and the weights member is copied to a temporary file under a name
of ours (never a name from the archive) so the same guarded readers see it. Anything else in a
`.zip` is a ModelLoadError saying what a model zip must hold.
"""

from __future__ import annotations

import difflib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from kdcore import limits
from kdcore.archive import open_zip
from kdcore.errors import ConfigError, InputError, ModelLoadError
from kdcore.models.loading import read_state_dict as read_file
from kdcore.models.registry import probe_size
from kdcore.models.spec import ModelSpec, json_depth

CONFIG = "config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # in order of preference
# Options that are the spec's own fields, or would make timm read a file or the hub.
RESERVED = (
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "pretrained_strict",
    "checkpoint_path",
    "cache_dir",
    "num_classes",
    "in_chans",
    "img_size",
    "features_only",
)
_MAX_CONFIG_BYTES = 2**20
HF_HINT = (
    "a Hugging Face-style model holds config.json (naming a timm architecture, as "
    "`timm.models.save_for_hf(model, 'folder', safe_serialization=True)` writes it) and model.safetensors"
)


def timm_names() -> list[str]:
    import timm  # heavy: timm, only for timm: architectures and HF zips

    return timm.list_models()


def build(spec: ModelSpec) -> nn.Module:
    """A fresh timm model for `spec` (arch `timm:<name>`); ConfigError for unknown names or options."""
    import timm  # heavy: timm, only for timm: architectures and HF zips

    name = spec.arch.removeprefix("timm:")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm_names(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; timm.list_models() lists them"
        raise ConfigError(f"Unknown timm model {name!r}{hint}")
    reserved = sorted(set(spec.extra) & set(RESERVED))
    if reserved:
        raise ConfigError(
            f"The options may not set {reserved}: timm models are built without pretrained weights, with "
            "num_classes and the input shape (in_chans, img_size) from the spec"
        )
    kwargs = {"num_classes": spec.num_classes, "in_chans": spec.input_shape[0], **_img_size(name, spec), **spec.extra}

    def make() -> nn.Module:
        return timm.create_model(name, pretrained=False, **kwargs)

    probe_size(make, f"timm's {name}", kwargs)
    return make()


def default_input(arch: str) -> tuple[int, int, int] | None:
    """timm's default input (C, H, W) for `timm:<name>`, or None for an unknown name."""
    import timm  # heavy: timm, only for timm: architectures and HF zips

    cfg = timm.get_pretrained_cfg(arch.removeprefix("timm:")) if timm.is_model(arch.removeprefix("timm:")) else None
    return tuple(cfg.input_size) if cfg is not None else None


def _img_size(name: str, spec: ModelSpec) -> dict:
    """{"img_size": (H, W)} for a model built for one input size when the spec's differs, else {}."""
    import timm  # heavy: timm, only for timm: architectures and HF zips

    cfg = timm.get_pretrained_cfg(name)
    if cfg is None or not cfg.fixed_input_size:
        return {}
    size = tuple(spec.input_shape[1:])
    return {} if size == tuple(cfg.input_size[1:]) else {"img_size": size}


def read_spec(path: Path, input_shape: tuple[int, ...] | None = None) -> ModelSpec:
    """The spec in a model folder's or zip's config.json; `input_shape` (the user's) replaces the
    file's. Raises ModelLoadError for anything wrong with the folder, the zip or the config."""
    path = Path(path)
    with _files(path) as files:
        config = _config(files, path)
    try:
        spec = spec_from_config(config)
        return spec.replace(input_shape=tuple(input_shape)) if input_shape else spec
    except ConfigError as e:
        raise ModelLoadError(f"The config.json of {path.name} is not a timm model config: {e}") from e


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a model folder or zip (model.safetensors, else pytorch_model.bin)."""
    path = Path(path)
    with _files(path) as files:
        _config(files, path)  # a folder without a timm config is not this format
        name = next((n for n in WEIGHTS if n in files), None)
        if name is None:
            raise ModelLoadError(f"{path.name} has a config.json but no {' or '.join(WEIGHTS)}; {HF_HINT}")
        return read_file(files.file(name))


def spec_from_config(config: dict) -> ModelSpec:
    """A ModelSpec from timm's hub config (either layout of `_parse_model_cfg`); raises ConfigError."""
    if "pretrained_cfg" not in config:  # the older single-dict layout
        config = {"architecture": config.get("architecture"), "pretrained_cfg": config, **config}
    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f'no "architecture" (a timm model name); {HF_HINT}')
    pre = config["pretrained_cfg"] if isinstance(config["pretrained_cfg"], dict) else {}
    args = config.get("model_args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"model_args must be a mapping; got {type(args).__name__}")
    num_classes = config.get("num_classes", pre.get("num_classes", args.get("num_classes")))
    shape = list(pre.get("input_size") or (3, 224, 224))
    if args.get("in_chans") is not None:
        shape[0] = args["in_chans"]
    if args.get("img_size") is not None:
        size = args["img_size"]
        shape[1:] = [size, size] if isinstance(size, int) else list(size)
    c = shape[0] if shape else 3
    names = config.get("label_names", pre.get("label_names", config.get("labels", pre.get("labels"))))
    return ModelSpec(
        arch=f"timm:{arch}",
        num_classes=num_classes,
        input_shape=tuple(shape),
        mean=_per_channel(pre.get("mean", (0.0,)), c),
        std=_per_channel(pre.get("std", (1.0,)), c),
        class_names=_label_list(names, num_classes),
        extra={k: v for k, v in args.items() if k not in RESERVED},
    )


def _per_channel(values: object, channels: object) -> tuple:
    """timm's own rule: a 3-value mean/std for a 1-channel model becomes its average."""
    if isinstance(values, (list, tuple)) and len(values) == 3 and channels == 1:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return (sum(values) / 3,)
    return tuple(values) if isinstance(values, (list, tuple)) else (values,)


def _label_list(names: object, num_classes: object) -> tuple:
    """label_names as a list, or as {index: name} with every index from 0 (timm allows both)."""
    if not names:
        return ()
    if isinstance(names, dict):
        try:
            by_index = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise ConfigError("label_names must map class indices to names") from None
        if sorted(by_index) != list(range(len(by_index))):
            return ()  # gaps: the indices are the only names we can trust
        names = [by_index[i] for i in range(len(by_index))]
    return tuple(names) if isinstance(names, (list, tuple)) else ()


def _config(files: _Files, path: Path) -> dict:
    if CONFIG not in files:
        raise ModelLoadError(f"{path.name} is not a model folder or zip kdcore can read: no config.json; {HF_HINT}")
    raw = files.read(CONFIG, _MAX_CONFIG_BYTES)
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelLoadError(f"The config.json of {path.name} is not valid JSON ({str(e)[:200]})") from e
    if not isinstance(config, dict) or json_depth(config) > limits.current().max_nesting:
        raise ModelLoadError(f"The config.json of {path.name} is not a JSON object of a timm model config")
    return config


class _Files:
    """The few files of a model folder or zip, by their plain name (config.json, model.safetensors)."""

    def __init__(self, names: set[str], read, file):
        self._names, self.read, self.file = names, read, file

    def __contains__(self, name: str) -> bool:
        return name in self._names


@contextmanager
def _files(path: Path) -> Iterator[_Files]:
    if path.is_dir():
        present = {n for n in (CONFIG, *WEIGHTS) if (path / n).is_file()}
        yield _Files(present, lambda n, cap: _read_capped(path / n, cap), lambda n: path / n)
        return
    if path.suffix.lower() != ".zip":
        raise ModelLoadError(f"{path.name} is neither a model folder nor a .zip; {HF_HINT}")
    try:
        with open_zip(path) as z, tempfile.TemporaryDirectory(prefix="kdcore-hf-") as tmp:
            members = _top_members(z.members, path)

            def read(name: str, cap: int, cap_name: str = "config.json's size") -> bytes:
                return z.read(members[name], cap, cap_name)

            def extract(name: str) -> Path:
                dst = Path(tmp) / name  # one of WEIGHTS: our name, not the archive's
                dst.write_bytes(read(name, limits.current().max_model_file_bytes, "max_model_file_bytes"))
                return dst

            yield _Files(set(members), read, extract)
    except InputError as e:  # the archive's checks: the model file is what is wrong
        raise ModelLoadError(str(e)) from e


def _top_members(members, path: Path) -> dict:
    """config.json and weights at the zip's top, or inside its one top folder; else ModelLoadError.
    macOS's resource-fork entries (`__MACOSX/`, `._*`), which Finder adds to every zip, are not files."""
    files = [m for m in members if not m.is_dir and not _mac_junk(m.name)]
    tops = {m.name.split("/", 1)[0] for m in files if "/" in m.name}
    at_top = {m.name: m for m in files if "/" not in m.name}
    if CONFIG not in at_top and len(tops) == 1 and not at_top:
        (top,) = tops
        at_top = {m.name.removeprefix(f"{top}/"): m for m in files if m.name.count("/") == 1}
    found = {n: m for n, m in at_top.items() if n in (CONFIG, *WEIGHTS)}
    if CONFIG not in found:
        raise ModelLoadError(
            f"{path.name} is a zip but not a Hugging Face-style model (no config.json at its top or in its one "
            f"top folder); {HF_HINT}. To audit other models upload the file itself (.safetensors, .onnx, .pt2)"
        )
    return found


def _mac_junk(name: str) -> bool:
    return name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1].startswith("._")


def _read_capped(path: Path, cap: int) -> bytes:
    if path.stat().st_size > cap:
        raise ModelLoadError(f"{path.name} is {path.stat().st_size:,} bytes; a model's config.json is far smaller")
    return path.read_bytes()
