"""Which layer of a model a method looks at: one choice, shared by Explain and every defense.

`choose_layer(model, spec, role, name=None) -> (name, module)`, roles:

    last_conv        the last nn.Conv2d to *run* (Grad-CAM's layer, the conv ℓ∞ pruning and
                     fine-pruning mask): paper-cnn `features.2`, paper-vgg11 its last conv,
                     resnet18-small `layer4.1.conv2`
    conv_activation  the module whose output, after a ReLU, is a last-conv channel's activation:
                     the BatchNorm that consumes the conv's output when there is one, else the conv
                     (resnet18-small `layer4.1.bn2`, paper-cnn `features.2`). Explain's activation
                     maps and ℓp norms (with relu=True) and ℓ∞ pruning's scores measure this.
    penultimate      the last nn.Linear to run; its *input* is the penultimate activation
                     (activation clustering)

A model whose only convolutions are patch embeddings (kernel = stride: a ViT's `patch_embed.proj`)
has no convolutional feature block: the conv roles are refused by default (a map or a pruned
channel there is input-level, not the late features these methods assume), and the user may still
choose the patch embedding by name.

Order is execution order, found by tracing one dummy forward pass (`kdcore.hooks.trace`), not
registration order: a model may define its layers in any order (`__init__` order is not forward
order), and two methods that pick "the last conv" must agree on every model. "Consumes" is an
identity test on that trace (the module received the conv's output tensor itself), so
functional ops (F.relu, +) are invisible and names are never guessed.

`name` overrides the choice by module name (`model.named_modules()`), and so does the spec's
`layers` (the user's choice: `--layer last_conv=NAME`, the dashboard's layer select; its
`last_conv` also moves `conv_activation`); a name that does not exist or is not of the role's kind
is a ConfigError listing the candidates. `layer_report` lists what a model offers, for the CLI's and
the dashboard's model check.
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

from kdcore.errors import ConfigError
from kdcore.hooks import Call, trace
from kdcore.models.spec import ModelSpec

Role = Literal["last_conv", "conv_activation", "penultimate"]
ROLES: tuple[str, ...] = get_args(Role)

NO_CONV = (
    "Grad-CAM, activation norms and maps, ℓ∞ pruning, fine-pruning and NAD need one; Neural Cleanse, "
    "distillation (KD), BCU and activation clustering still apply"
)


def _kind(role: str) -> type[nn.Module]:
    if role not in ROLES:
        raise ConfigError(f"Layer role must be one of {ROLES}; got {role!r}")
    return nn.Linear if role == "penultimate" else nn.Conv2d


def _run_order(calls: list[Call], kind: type[nn.Module]) -> list[str]:
    """Names of the `kind` modules that ran, each once, in the order of their last call."""
    names = [c.name for c in calls if isinstance(c.module, kind)]
    return list(reversed(dict.fromkeys(reversed(names))))


def consumers(calls: list[Call], name: str) -> list[Call]:
    """Calls that received the output of `name`'s call itself as an input, in the order they finish.

    ConfigError unless `name` ran exactly once in the traced pass (its output must be one tensor).
    """
    own = [c for c in calls if c.name == name]
    if len(own) != 1:
        raise ConfigError(f"{name!r} ran {len(own)} times in one forward pass; pick a layer the model uses once")
    out = own[0].output
    return [c for c in calls if c is not own[0] and c.consumes(out)]


def _norm_after(calls: list[Call], conv_name: str) -> str | None:
    """The first BatchNorm that consumes `conv_name`'s output, or None."""
    for c in consumers(calls, conv_name):
        if isinstance(c.module, nn.modules.batchnorm._BatchNorm):
            return c.name
    return None


def _patchify(conv: nn.Conv2d) -> bool:
    """A patch embedding: non-overlapping windows (kernel = stride > 1), as ViTs cut images."""
    return conv.kernel_size == conv.stride and max(conv.kernel_size) > 1


def require_conv(model: nn.Module) -> None:
    """ConfigError naming the methods that cannot run, and those that can, when `model` has no conv."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ConfigError(f"{type(model).__name__} has no nn.Conv2d layer: {NO_CONV}")


def choose_layer(model: nn.Module, spec: ModelSpec, role: Role, name: str | None = None) -> tuple[str, nn.Module]:
    """(qualified name, module) of the layer `role` picks in `model`; `name` overrides by name.

    Runs one dummy forward pass of 2 blank images (eval and inference mode, modes restored).
    """
    kind = _kind(role)
    if name is None:
        name = spec.layers.get("penultimate" if role == "penultimate" else "last_conv")
    what = "nn.Conv2d" if kind is nn.Conv2d else "nn.Linear"
    modules = dict(model.named_modules())
    if kind is nn.Conv2d:
        require_conv(model)
    elif not any(isinstance(m, kind) for m in modules.values()):
        raise ConfigError(
            f"{type(model).__name__} has no nn.Linear layer, so it has no penultimate activations (the input "
            "of the final dense layer); activation clustering needs one"
        )
    calls = trace(model, spec.input_shape)
    ran = _run_order(calls, kind)
    if name is None:
        if not ran:
            raise ConfigError(f"None of {type(model).__name__}'s {what} layers runs in a forward pass")
        name = ran[-1]
        if kind is nn.Conv2d and all(_patchify(modules[n]) for n in ran):
            raise ConfigError(
                f"{type(model).__name__}'s only convolution ({name}) cuts the image into patches (kernel = stride), "
                f"as a vision transformer's patch embedding does: there is no convolutional feature block. {NO_CONV}. "
                "To run them on the patch embedding anyway, choose it as the conv layer"
            )
    elif name not in modules:
        raise ConfigError(f"{type(model).__name__} has no module named {name!r}; pick one of its {what} layers: {ran}")
    elif not isinstance(modules[name], kind):
        raise ConfigError(
            f"{name!r} is a {type(modules[name]).__name__}, not an {what}; pick one of the model's {what} layers: {ran}"
        )
    if role == "conv_activation":
        norm = _norm_after(calls, name)
        if norm is not None:
            return norm, modules[norm]
    return name, modules[name]


def layer_report(model: nn.Module, spec: ModelSpec) -> dict:
    """What the layer choice finds in `model`: the candidates per role, in run order, and the choice.

    {"conv": [names], "linear": [names], "last_conv": name | None, "conv_activation": name | None,
     "penultimate": name | None, "problems": {role: message}} — a role that cannot be chosen has a
    problem instead of a name (e.g. a ViT has no conv), never an exception.
    """
    calls = trace(model, spec.input_shape)
    out: dict = {"conv": _run_order(calls, nn.Conv2d), "linear": _run_order(calls, nn.Linear), "problems": {}}
    for role in ROLES:
        try:
            out[role] = choose_layer(model, spec, role)[0]
        except ConfigError as e:
            out[role], out["problems"][role] = None, str(e)
    return out
