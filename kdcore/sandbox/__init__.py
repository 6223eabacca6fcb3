"""Untrusted parsing in a separate, limited, short-lived process.

Model files, image archives, image folders and single uploaded images come from people the user
does not trust. The readers (`kdcore.models.loading`, `kdcore.data.folders`) check budgets while
they read, but a reader bug or a parser library's crash (a tuple nested a million deep overflows
the C stack while it is hashed) must cost a throw-away process, not the dashboard or a worker.

How one call runs:
1. The parent makes a private temp dir (mode 0700) and starts a child from a fork server that has
   kdcore, torch, safetensors and PIL already imported (measured on 2 cores: 0.04–0.08 s
   for a spec read and 0.22–0.27 s for a model check, against 1.4–1.7 s and 2.4–3.2 s for a freshly
   spawned interpreter; the server's own start costs ~3 s once). The child side is `.child`.
2. The child first puts itself in its own process group, then limits itself before it touches the
   file: RLIMIT_AS = its current size + the memory budget (torch alone maps ~3 GB of virtual
   memory, so an absolute cap would not even let it start), RLIMIT_CPU, RLIMIT_FSIZE = the
   memory budget (it can write no more than it could hold), RLIMIT_CORE = 0. It uses one thread,
   sends its stdout/stderr to files in the temp dir, and works in that dir. It imports the reader's
   module, then confines itself (`.confine`: Landlock + a seccomp filter): from there on it reads only
   its inputs (`run`'s `reads`) and Python, writes only the temp dir, and opens no socket.
3. The child calls the reader and writes the result there: tensors as a .safetensors file
   (written by `_write_safetensors`, no copy) and everything else as JSON. Never a pickle: a
   compromised child must not get to run code in the parent through its answer.
4. The parent waits up to the wall-clock timeout, then kills the child's process group, reads
   the answer with safetensors and json only, rebuilds the value from a closed set of types, and
   removes the temp dir.

What the parent raises:
    the reader's own KDCoreError     re-raised as the same class with the same message
    crash / memory / time            `error` (InputError or ModelLoadError): "<name>: this file
                                     could not be read safely (it crashed / needed more than N GB
                                     / took longer than N s)"
    a file or socket the confinement `error`: "... (it tried to open a file outside its upload /
    refused                          a network connection, which the sandbox refuses)"
    any other exception in the child a bug: RuntimeError with the child's traceback

Budgets (`Budget`): the dashboard's checks use the sandbox_* limits as they are (`Budget.flat`).
Jobs read whole image sets and big models, so the default for the loaders is `Budget.scaled`: the
memory grows by max_dataset_bytes for image sets (the readers refuse a decoded set larger than
that) or by 3 × the file's size for models (the file's tensors, the built model and the copy it
answers with), and the time by `_S_PER_GIB` seconds per GiB of input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdcore.data.imageset import ImageSet
from kdcore.errors import InputError, ModelLoadError
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.sandbox import model_check
from kdcore.sandbox.confine import Confinement, available
from kdcore.sandbox.runner import Budget, BudgetArg, PathLike, budget_for, model_inputs, prestart, run

__all__ = [  # the sandbox's face: the readers below and the runner's public names
    "Budget", "BudgetArg", "Confinement", "PathLike", "check_model", "confinement", "decode_image",
    "load_labeled", "load_model", "load_unlabeled", "prestart", "read_spec", "run",
]  # fmt: skip


# ── the public readers: same signatures as the ones they wrap, plus `budget` ──────────────────────


def read_spec(
    path: PathLike, *, input_shape: tuple[int, int, int] | None = None, budget: BudgetArg = "flat"
) -> ModelSpec | None:
    """`kdcore.models.loading.read_spec`, in a sandbox."""
    shape = tuple(int(v) for v in input_shape) if input_shape else None
    b = budget_for(budget, path, "model")
    reads = model_inputs(path)
    return run("kdcore.sandbox.child:read_spec", (str(path), shape), b, ModelLoadError, path, reads=reads)


def load_model(
    path: PathLike, spec: ModelSpec | None = None, device: str | torch.device = "cpu", *, budget: BudgetArg = "scaled"
) -> tuple[torch.nn.Module, ModelSpec]:
    """`kdcore.models.loading.load_model`, in a sandbox.

    The child reads, validates and test-runs the model and answers with its state_dict and spec;
    the parent rebuilds the architecture from that spec (the same `build_model` call, so the same
    random draws, as a direct load) and loads the tensors strictly.
    """
    spec_dict = spec.to_dict() if spec is not None else None
    b = budget_for(budget, path, "model")
    args, reads = (str(path), spec_dict), model_inputs(path, spec)
    state, got = run("kdcore.sandbox.child:load_model_state", args, b, ModelLoadError, path, reads=reads)
    model = build_model(got)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # the child loaded these into the same architecture; never expected
        raise ModelLoadError(f"The weights read from {Path(path).name} do not load into {got.arch}: {e}") from e
    model.eval()
    return model.to(device), got


def confinement() -> Confinement:
    """What the parsing children are kept from on this kernel (`.confine`); `.note` says what is missing."""
    return available()


def check_model(path: PathLike, spec: ModelSpec | None = None, *, budget: BudgetArg = "flat") -> tuple:
    """New audit's model check, in a sandbox: (spec, parameters, layer report); see `.model_check`."""
    return model_check.check_model(path, spec, budget)


def load_labeled(path: PathLike, *args: Any, budget: BudgetArg = "scaled", **kwargs: Any) -> ImageSet:
    """`kdcore.data.folders.load_labeled`, in a sandbox."""
    b = budget_for(budget, path, "images")
    return run("kdcore.data.folders:load_labeled", (str(path), *args), b, InputError, path, kwargs, (path,))


def load_unlabeled(path: PathLike, *args: Any, budget: BudgetArg = "scaled", **kwargs: Any) -> ImageSet:
    """`kdcore.data.folders.load_unlabeled`, in a sandbox."""
    b = budget_for(budget, path, "images")
    return run("kdcore.data.folders:load_unlabeled", (str(path), *args), b, InputError, path, kwargs, (path,))


def decode_image(
    data: bytes, input_shape: tuple[int, int, int], name: str = "image", *, budget: BudgetArg = "flat"
) -> torch.Tensor:
    """`kdcore.data.folders.decode_image`, in a sandbox: the bytes go to the child as a file."""
    b = Budget.flat() if budget in ("flat", "scaled") else budget
    return run("kdcore.sandbox.child:decode_image", (bytes(data), tuple(input_shape), name), b, InputError, name)
