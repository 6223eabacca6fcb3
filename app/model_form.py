"""The New-audit page's model section: what architecture the upload is, and which layers the methods use.

Where the architecture comes from:
- the file itself, for formats that carry their graph (`GRAPH_FORMATS`: ONNX, torch.export, a Hugging
  Face-style zip): no picker, the job reads it from the file as the model check did;
- the picker otherwise: the built-ins, installed plugins (entry point group `kdaudit.architectures`),
  `timm:<name>`, `tv:<name>`, and — only when the server runs with `KDAUDIT_TRUST_CODE=1`
  (`plugins.trusted()`) — a class in an uploaded Python file. That file is stored under its full
  SHA-256 (`save_upload(..., full_hash=True)`), so the job's `arch_file` names exactly the file checked.

`model_ui` is the section (`app.section.Section`): a `ModelInput` or what to fix. Inside it
`model_spec_ui` gives a `ModelChoice`: the spec the model check loads the upload as, and the
AuditConfig fields that tell the job the same; `layers_ui` shows the check's `layer_report` and
returns the user's layer overrides (AuditConfig `layers`, "role=name").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app.section import Section
from app.state import show_error
from app.uploads import ModelCheck, check_model, save_upload, stored_spec
from kdcore.errors import ConfigError, KDCoreError
from kdcore.io import file_sha256
from kdcore.models import plugins
from kdcore.models.registry import ARCHS, DEFAULT_INPUT
from kdcore.models.spec import ModelSpec

# Upload suffixes whose file defines its own architecture → (spec arch when the file carries no spec, words)
GRAPH_FORMATS = {".onnx": ("onnx", "ONNX graph"), ".pt2": ("pt2", "torch.export archive"), ".zip": ("", "config.json")}
TIMM = "timm model (timm:<name>)"
TV = "torchvision model (tv:<name>)"
PY_FILE = "a class in a Python file (runs that file)"
UNTRUSTED_NOTE = (
    "An architecture from your own Python file is not offered: building it runs that file on this server. "
    f"The server's admin can allow it by starting the dashboard with {plugins.TRUST_ENV}=1 (off by default). "
    "Without that: export the model to ONNX (`torch.onnx.export`), or install the class as a plugin "
    f"(entry point group {plugins.GROUP})."
)
ARCH_HELP = (
    "The network your weights were trained with. paper-cnn: a small CNN for 28×28 grey images · "
    "paper-vgg11: a VGG-11 for 32×32 colour images · resnet18-small: a ResNet-18 for 32×32 colour images · "
    "plugins: architectures installed on the server · timm / torchvision: the named model, built without "
    "pretrained weights, with your weights loaded on top.\n\n"
    "From the papers: paper-cnn and paper-vgg11 are the networks of Yoshida & Fujino (AISec 2020), Tables 7 and 8; "
    "resnet18-small is BCU's ResNet-18."
)
ROLE_LABELS = {
    "last_conv": "Conv layer (Grad-CAM, activation maps, ℓ∞ pruning, fine-pruning, NAD)",
    "penultimate": "Final dense layer (its input is the penultimate activation: activation clustering)",
}


@dataclass(frozen=True)
class ModelChoice:
    spec: ModelSpec  # what the model check loads the upload as
    config: dict  # the AuditConfig fields that say the same to the job


@dataclass(frozen=True)
class ModelInput:
    path: Path  # the stored upload
    choice: ModelChoice
    layers: list[str]  # AuditConfig `layers`: the roles the user moved off the automatic choice


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.replace(" ", "").split(",") if v)


def _keep_valid(key: str, options: Sequence) -> None:
    """Drop a widget's remembered value that the current options no longer contain."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


def graph_format(path: Path) -> tuple[str, str] | None:
    """(arch, words) when the upload defines its own architecture, else None."""
    return GRAPH_FORMATS.get(path.suffix.lower())


def arch_options() -> list[str]:
    """The picker: built-ins, installed plugins, timm, torchvision, and a Python file when trusted."""
    return [*sorted(ARCHS), *plugins.plugin_names(), TIMM, TV, *([PY_FILE] if plugins.trusted() else [])]


def _picked(stored: ModelSpec | None, options: list[str]) -> str:
    """The picker's entry for a file's spec; "" when the picker cannot offer its architecture."""
    if stored is None:
        return "paper-cnn"
    if stored.arch in options:
        return stored.arch
    return TIMM if stored.arch.startswith("timm:") else TV if stored.arch.startswith("tv:") else ""


# The widgets prefilled from an upload: a new upload starts them again from its own values
SPEC_KEYS = (
    "graph_input_shape",
    "arch",
    "timm_name",
    "tv_name",
    "num_classes",
    "input_shape",
    "mean",
    "std",
    "class_names",
)
LAYER_KEYS = ("layer_last_conv", "layer_penultimate")


def _new_upload(model_path: Path) -> None:
    if st.session_state.get("_model_for") != str(model_path):
        st.session_state["_model_for"] = str(model_path)
        for key in (*SPEC_KEYS, *LAYER_KEYS):
            st.session_state.pop(key, None)


def model_ui(model_path: Path | None) -> Section[ModelInput | None]:
    """The model section for the stored upload at `model_path` (None: nothing uploaded): its spec,
    the check that loads it with a test batch, and the layers the methods use."""
    if model_path is None:
        return Section(None)
    stored = stored_spec_ui(model_path)
    if stored.problem:
        return Section(None, stored.problem)
    choice = model_spec_ui(stored.value, model_path)
    if choice.value is None:
        return Section(None, choice.problem)
    try:
        check = check_model(str(model_path), json.dumps(choice.value.spec.to_dict()))
    except KDCoreError as e:
        return Section(None, show_error(e))
    model_check_ui(check, model_path)
    return Section(ModelInput(model_path, choice.value, layer_config(layers_ui(check.layers))))


def stored_spec_ui(model_path: Path) -> Section[ModelSpec | None]:
    """The spec the upload carries (None when it carries none), or why the file cannot be read. A
    graph whose image size is symbolic (an ONNX export with dynamic axes) cannot say its input shape:
    where reading it without one fails, ask for one."""
    _new_upload(model_path)
    try:
        return Section(stored_spec(str(model_path)))
    except KDCoreError as e:  # a malformed or hostile file: say why, and no audit with it
        refusal = e
    slot = st.empty()  # the refusal, above the input shape that may answer it
    hint = ""
    if graph_format(model_path) is not None:
        hint = st.text_input(
            "Input shape C,H,W the graph was trained on (if the message above says its size is symbolic)",
            key="graph_input_shape",
        ).replace(" ", "")
    if hint:
        try:
            return Section(stored_spec(str(model_path), tuple(int(v) for v in hint.split(","))))
        except ValueError:
            refusal = ConfigError(f"Input shape must be three integers like 3,224,224; got {hint!r}")
        except KDCoreError as e:
            refusal = e
    with slot.container():
        return Section(None, show_error(refusal))


def model_spec_ui(stored: ModelSpec | None, model_path: Path) -> Section[ModelChoice | None]:
    """Architecture, classes, input shape, normalisation, class names; prefilled from the file's spec
    (from the file's own values again whenever another file is uploaded). None with why, when the
    fields do not make a model spec."""
    _new_upload(model_path)
    graph = graph_format(model_path)
    options = arch_options()
    fixed = graph is not None or (stored is not None and not _picked(stored, options))
    c1, c2, c3 = st.columns([2, 1, 1])
    extra: dict = {}
    if fixed:  # the file defines the graph (or its spec names one the picker cannot offer)
        if stored is None and not graph[0]:
            why = f"{model_path.name} names no architecture; upload a zip with config.json + model.safetensors"
            st.error(why, icon="🚫")
            return Section(None, why)
        arch = stored.arch if stored else graph[0]
        words = graph[1] if graph else "the file's spec"
        c1.markdown(f"**Architecture:** from the file ({words}) · `{arch}`")
    else:
        if stored is not None:
            st.info(
                f"This file carries its spec: {stored.arch}, {stored.num_classes} classes, input "
                f"{tuple(stored.input_shape)}. You can still change it below.",
                icon="ℹ️",
            )
        picked = _picked(stored, options)
        choice = c1.selectbox(
            "Architecture",
            options,
            index=options.index(picked),
            key="arch",
            help=ARCH_HELP,
        )
        if not plugins.trusted():
            c1.caption(UNTRUSTED_NOTE)
        arch = choice
        for option, prefix, key in ((TIMM, "timm:", "timm_name"), (TV, "tv:", "tv_name")):
            if choice == option:
                carried = stored.arch[len(prefix) :] if stored and stored.arch.startswith(prefix) else "resnet18"
                arch = prefix + c1.text_input(f"{prefix[:-1]} model name", value=carried, key=key).strip()
        if choice == PY_FILE:
            source = _python_file_ui(c1)
            if source.value is None:
                return Section(None, source.problem)
            arch, extra = source.value
    num_classes = c2.number_input(
        "Classes",
        2,
        10_000,
        value=stored.num_classes if stored else 10,
        key="num_classes",
        disabled=fixed and stored is not None,
        help="Read from the file" if fixed and stored is not None else None,
    )
    shape0 = stored.input_shape if stored else DEFAULT_INPUT.get(arch, (3, 224, 224))
    shape_text = c3.text_input(
        "Input shape C,H,W",
        value=",".join(map(str, shape0)),
        key="input_shape",
        help="Images are converted to this many channels and resized to H×W",
    )
    c4, c5 = st.columns(2)
    mean = c4.text_input(
        "Mean (per channel, images scaled to 0–1)",
        value=",".join(f"{v:g}" for v in (stored.mean if stored else (0.0,))),
        key="mean",
    )
    std = c5.text_input(
        "Std (per channel)", value=",".join(f"{v:g}" for v in (stored.std if stored else (1.0,))), key="std"
    )
    names = st.text_input(
        "Class names in output order (optional, comma-separated)",
        value=",".join(stored.class_names) if stored else "",
        key="class_names",
    )
    try:
        shape = tuple(int(v) for v in shape_text.replace(" ", "").split(","))
        edits = {
            "input_shape": shape,
            "mean": _floats(mean) or (0.0,),
            "std": _floats(std) or (1.0,),
            "class_names": tuple(n.strip() for n in names.split(",") if n.strip()),
        }
        if fixed and stored is not None:  # the job reads the rest from the file, as the check does
            return Section(ModelChoice(stored.replace(**edits), edits))
        spec = ModelSpec(arch, int(num_classes), **edits, **extra)
    except ValueError:
        why = f"Input shape must be three integers like 1,28,28 and mean/std numbers; got {shape_text!r}"
        st.error(why, icon="🚫")
        return Section(None, why)
    except KDCoreError as e:
        return Section(None, show_error(e))
    config = {"num_classes": spec.num_classes, **edits}
    if spec.arch.startswith("file:"):
        config["arch_file"] = f"{spec.source}:{spec.arch.removeprefix('file:')}"
        config["arch_file_sha256"] = spec.source_sha256  # the job builds exactly the file checked here
        config["arch_kwargs"] = dict(spec.extra)
    else:
        config["arch"] = spec.arch
    return Section(ModelChoice(spec, config))


def _python_file_ui(col) -> Section[tuple[str, dict] | None]:
    """Upload model.py + class name + kwargs JSON → ("file:<Class>", spec fields), or None with why."""
    up = col.file_uploader("Python file that defines the architecture", type=["py"], key="arch_source")
    cls = col.text_input("Class (or function returning the nn.Module)", key="arch_class").strip()
    kwargs_text = col.text_input("Keyword arguments (JSON object, optional)", value="{}", key="arch_kwargs")
    col.caption(
        "Building the model runs this file on the server. It is called with the arguments it accepts among "
        "num_classes, input_shape, in_channels, in_chans, plus the keyword arguments above."
    )
    if up is None or not cls:
        col.caption("Upload the file and name the class.")
        return Section(None, "Upload the Python file that defines the architecture and name its class")
    try:
        kwargs = json.loads(kwargs_text or "{}")
    except ValueError:
        kwargs = None
    why = ""
    if not isinstance(kwargs, dict):
        why = f'Keyword arguments must be a JSON object like {{"width": 32}}; got {kwargs_text!r}'
    elif not cls.isidentifier():
        why = f"{cls!r} is not a Python class name"
    if why:
        st.error(why, icon="🚫")
        return Section(None, why)
    try:
        path = save_upload(up.getvalue(), up.name, full_hash=True)
    except KDCoreError as e:  # over the user's upload quota: nothing stored
        return Section(None, show_error(e))
    return Section((f"file:{cls}", {"extra": kwargs, "source": str(path), "source_sha256": file_sha256(path)}))


def model_check_ui(check: ModelCheck, model_path: Path) -> None:
    """What was read: input shape, classes and their names, parameters."""
    spec = check.spec
    graph = graph_format(model_path)
    arch = f"{spec.arch} (from the file: {graph[1]})" if graph else spec.arch
    names = f" ({', '.join(spec.class_names)})" if spec.class_names else ""
    st.success(
        f"Model loads: {arch}, {check.parameters:,} parameters, {check.output_classes} output classes{names}, "
        f"input {tuple(spec.input_shape)}.",
        icon="✅",
    )
    if check.sandbox_note:  # the kernel lacks Landlock: read all the same, and say so
        st.warning(check.sandbox_note[:1].upper() + check.sandbox_note[1:] + ".", icon="⚠️")


def layers_ui(report: dict) -> dict[str, str]:
    """The layers found for Explain and the defenses, a select per role (default: the automatic choice),
    and what cannot run where a role has none. Returns the roles the user moved off the default."""
    st.markdown(
        f"**Layers found for Explain / defenses:** {len(report['conv'])} conv, {len(report['linear'])} dense "
        "(in the order they run)."
    )
    chosen: dict[str, str] = {}
    cols = st.columns(2)
    for col, (role, kind) in zip(cols, (("last_conv", "conv"), ("penultimate", "linear")), strict=True):
        auto, options = report.get(role), report[kind]
        if auto is None or not options:
            col.warning(report["problems"].get(role, f"No {kind} layer found"), icon="⚠️")
            continue
        key = f"layer_{role}"
        _keep_valid(key, options)
        name = col.selectbox(ROLE_LABELS[role], options, index=options.index(auto), key=key)
        if role == "last_conv" and name == auto and report.get("conv_activation") not in (None, auto):
            col.caption(f"Activations are measured after `{report['conv_activation']}`, which normalises it.")
        if name != auto:
            chosen[role] = name
    return chosen


def layer_config(chosen: dict[str, str]) -> list[str]:
    """AuditConfig `layers`: ["role=name", ...] for the roles the user chose."""
    return [f"{role}={name}" for role, name in chosen.items()]
