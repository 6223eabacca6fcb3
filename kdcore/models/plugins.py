"""Architectures from outside kdcore: installed plugins, and a class in a Python file (with trust).

Plugins. A package registers architectures under the entry-point group `kdaudit.architectures`,
e.g. in its pyproject.toml:

    [project.entry-points."kdaudit.architectures"]
    my-cnn = "mypkg.models:MyCNN"

The name (`my-cnn`) is then an `--arch` like the built-in ones, in the dashboard's picker and in
every worker process (entry points are read from the installed packages, not from a patched
registry). Installing a package is the user's act of trust, so a plugin needs no switch.

A Python file. `--arch-file model.py:MyNet` names a class (or any function returning an
nn.Module) in a file. Building it runs that file, so it needs trust: `--trust-code` on the CLI,
or `KDAUDIT_TRUST_CODE=1` in the environment of the dashboard server and its workers (off by
default; the CLI flag sets it for its own process and children). The spec records the file and
its SHA-256 (`source`, `source_sha256`), so a job runs exactly the file that was checked.

Either way the builder is called with the keyword arguments it accepts among `num_classes`,
`input_shape` (C, H, W) and `in_channels` / `in_chans`, plus the spec's `extra` options
(`--arch-kwargs JSON`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from importlib import metadata

from torch import nn

from kdcore.errors import ConfigError
from kdcore.models.sources import source_path
from kdcore.models.spec import ModelSpec

GROUP = "kdaudit.architectures"
TRUST_ENV = "KDAUDIT_TRUST_CODE"


def trusted() -> bool:
    """Whether running user-supplied Python (an --arch-file) is allowed in this process."""
    return os.environ.get(TRUST_ENV, "") == "1"


def trust_code() -> None:
    """Allow --arch-file for this process and the processes it starts (the CLI's --trust-code)."""
    os.environ[TRUST_ENV] = "1"


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP)}


def plugin_names() -> list[str]:
    """Names registered by installed packages under `kdaudit.architectures`, sorted."""
    return sorted(_entry_points())


def build_plugin(spec: ModelSpec) -> nn.Module:
    ep = _entry_points().get(spec.arch)
    if ep is None:
        raise ConfigError(f"No installed plugin registers the architecture {spec.arch!r} (group {GROUP})")
    try:
        builder = ep.load()
    except Exception as e:  # a broken plugin package: say which
        raise ConfigError(f"The plugin {spec.arch!r} ({ep.value}) cannot be imported: {type(e).__name__}: {e}") from e
    return call_builder(builder, spec, f"plugin {spec.arch!r} ({ep.value})")


def require_trust(what: str) -> None:
    """ConfigError unless running user-supplied Python is allowed here (`what` names the file's class)."""
    if not trusted():
        raise ConfigError(
            f"{what} is defined in a Python file, and building it runs that file. Allow it with --trust-code "
            f"(CLI), or start the dashboard with {TRUST_ENV}=1 if you trust the file's author; or register the "
            f"architecture in an installed package (entry point group {GROUP}), or export the model to ONNX"
        )


def split_arch_file(text: str) -> tuple[str, str]:
    """'model.py:MyNet' → ('model.py', 'MyNet'); ConfigError for anything else."""
    path, sep, name = text.rpartition(":")
    if not sep or not path.endswith(".py") or not name.isidentifier():
        raise ConfigError(f"--arch-file takes FILE.py:ClassName, e.g. model.py:MyNet; got {text!r}")
    return path, name


def build_file(spec: ModelSpec) -> nn.Module:
    """The class named by `file:<Class>` in the spec's source file; runs that file (needs trust)."""
    class_name = spec.arch.removeprefix("file:")
    require_trust(spec.arch)
    path = source_path(spec)
    module_name = f"kdaudit_arch_{spec.source_sha256[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"{path.name} cannot be imported as a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:  # the user's file: report, do not crash
            raise ConfigError(f"Running {path.name} failed: {type(e).__name__}: {e}") from e
        sys.modules[module_name] = module
    builder = getattr(module, class_name, None)
    if not callable(builder):
        found = [n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, nn.Module)]
        raise ConfigError(f"{path.name} has no class or function {class_name!r}; its nn.Module classes: {found}")
    return call_builder(builder, spec, f"{class_name} in {path.name}")


def call_builder(builder: Callable, spec: ModelSpec, what: str) -> nn.Module:
    """Call `builder` with the keyword arguments it accepts (see the module docstring)."""
    offered = {
        "num_classes": spec.num_classes,
        "input_shape": tuple(spec.input_shape),
        "in_channels": spec.input_shape[0],
        "in_chans": spec.input_shape[0],
    }
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if k in params or (takes_any and k in ("num_classes",))}
    kwargs.update(spec.extra)
    try:
        model = builder(**kwargs)
    except Exception as e:  # the user's code, fed the user's options
        raise ConfigError(f"Building {what} with {kwargs} failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} returned a {type(model).__name__}, not a torch nn.Module")
    return model
