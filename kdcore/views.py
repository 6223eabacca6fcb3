"""What the dashboard's first visit to a finished run needs, computed once at the end of the run.

A first visit used to rebuild the run (decode every training and test image, load the models)
and compute Explain's Grad-CAM and ℓp norms while the user waited (issue 14: 14–25 s). The run
has all of that in hand when it ends, so it writes it down:

<run_dir>/view/run.json       the context's spec, trigger and set sizes, the teacher's conv layers
                              (`layer_report`) and the keys of what explain.npz holds
<run_dir>/view/top.csv        the first `TOP_ROWS` rows of candidates.csv (Explain's pool: no 10k-row parse)
<run_dir>/view/candidates.npz all of candidates.csv, one array per column (`kdcore.candidates.to_columns`):
                              the review queue's table without parsing the CSV
<run_dir>/view/train_top.npz  their training images (the gallery's first pages, Explain's pool)
<run_dir>/view/teacher.safetensors  the teacher as kdcore read it (audits; the demo records its stage file)
<run_dir>/view/explain.npz    Explain's default selection: Grad-CAM panels and activation maps of
                              the picked top candidates (each one the activation view offers),
                              ℓp-norm statistics of the default models

Every entry of explain.npz is keyed by a hash of its inputs (model, conv layer, classes, image
bytes), so the page uses one only for exactly the inputs it would compute it from; anything else
(another image, another layer, an older run without view/) is computed as before. The
computations themselves live here (`gradcam_panels`, `layer_activations`, `norm_sample`) and the
page calls the same functions: one place, the same numbers. Everything runs on the CPU, as the
dashboard does, so a GPU run's view matches what the page would compute.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdcore.candidates import FILE_NAME as CANDIDATES_FILE
from kdcore.candidates import Candidate, from_columns, read_candidates, to_columns, write_candidates
from kdcore.errors import InputError
from kdcore.explain import NormStats, activations, compare_norms, gradcam, overlay
from kdcore.io import atomic_write_bytes, atomic_write_json, read_json
from kdcore.models.layers import Role, choose_layer, layer_report
from kdcore.models.loading import load_model, save_model
from kdcore.models.spec import ModelSpec
from kdcore.run_context import RunContext
from kdcore.train import predict_logits
from kdcore.triggers import Trigger

log = logging.getLogger("kdcore")

VIEW_DIR = "view"
VERSION = 1
CANDIDATES_COLUMNS = "candidates.npz"
TOP_ROWS = 48  # candidates whose images are kept: two gallery pages of 24, Explain's pool of 12
EXPLAIN_PICKED = 2  # images Explain shows before the user picks (the first of its pool)
NORM_IMAGES = 500  # test images behind the ℓp-norm histograms
ACT_ROLE: Role = "conv_activation"  # with relu=True: relu(bn(last conv)) or relu(last conv), as ℓ∞ pruning
CPU = torch.device("cpu")


# ── the computations the page and the precompute share ──────────────────────────────────────────


def at_layer(spec: ModelSpec, layer: str | None) -> ModelSpec:
    """`spec` with `layer` as its last conv (`choose_layer` then uses it for every role built on it)."""
    return (
        spec
        if layer is None or spec.layers.get("last_conv") == layer
        else spec.replace(layers={**spec.layers, "last_conv": layer})
    )


def gradcam_panels(
    model: nn.Module, spec: ModelSpec, images: np.ndarray, chosen: Sequence[int | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For uint8 images (N, C, H, W): softmax probabilities (N, K) and Grad-CAM overlays (N, H, W, 3)
    uint8 for the predicted class and for `chosen` (None entries: predicted), on the CPU."""
    x = torch.from_numpy(images)
    probs = torch.softmax(predict_logits(model, spec, x, CPU), dim=1).numpy()
    cams_pred = gradcam(model, spec, x, None)  # (N, H, W)
    cams_chosen = gradcam(model, spec, x, list(chosen))
    over_pred = np.stack([overlay(images[i], cams_pred[i]) for i in range(len(images))])
    over_chosen = np.stack([overlay(images[i], cams_chosen[i]) for i in range(len(images))])
    return probs, over_pred, over_chosen


def layer_activations(model: nn.Module, spec: ModelSpec, images: np.ndarray) -> np.ndarray:
    """float32 (N, C, h, w): post-ReLU activations (`ACT_ROLE` of the spec's last conv) of uint8 images."""
    layer = choose_layer(model, spec, ACT_ROLE)[1]
    return activations(model, spec, torch.from_numpy(images), layer, relu=True).numpy()


def norm_sample(test, trigger: Trigger | None, max_images: int = NORM_IMAGES, seed: int = 0) -> torch.Tensor:
    """Up to `max_images` test images (uint8 (N, C, H, W)) the trigger should flip (non-target
    classes; all classes when there is no trigger), a fixed random sample in test-set order."""
    if test is None:
        raise InputError("This run has no test set, so there are no images to measure activations on")
    keep = torch.ones(len(test), dtype=torch.bool)
    if trigger is not None and test.labels is not None:
        keep = trigger.victims(test.labels)
    idx = torch.nonzero(keep).flatten()
    if len(idx) > max_images:
        g = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(len(idx), generator=g)[:max_images]].sort().values
    return test.images[idx]


def chosen_class(mode: str | int, label: int | None, trigger: Trigger | None) -> int | None:
    """The class of Explain's second map: the trigger target, the true label or a class index;
    None (= the predicted class) when the label is unknown."""
    if mode == "target" and trigger is not None:
        return trigger.target
    if mode == "true":
        return label
    return mode if isinstance(mode, int) else label


def key(*parts) -> str:
    """A short hash of the inputs (arrays by dtype, shape and bytes) that names one stored result."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True).encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


def gradcam_key(model_name: str, layer: str | None, images: np.ndarray, chosen: Sequence[int | None]) -> str:
    return key("gradcam", model_name, layer, list(chosen), images)


def activations_key(model_name: str, layer: str | None, images: np.ndarray) -> str:
    return key("activations", model_name, layer, images)


def norms_key(models: Sequence[str], layer: str | None, max_images: int, trigger_json: str) -> str:
    return key("norms", list(models), layer, max_images, trigger_json)


# ── reading a view ───────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class RunView:
    """What a page needs to know of a run before it loads any model or image."""

    run_dir: Path  # the run whose models and data these are (a refine job's source run)
    kind: str
    spec: ModelSpec
    trigger: Trigger | None
    n_train: int  # 0 = no training set
    n_test: int  # 0 = no test set
    layers: dict  # `layer_report` of the teacher
    train_classes: tuple[str, ...] = ()  # the training set's class names

    @property
    def has_train(self) -> bool:
        return self.n_train > 0

    @property
    def has_test(self) -> bool:
        return self.n_test > 0


def view_dir(run_dir: str | Path) -> Path:
    """A run's view folder; a refine job shows its source run's data, so it reads that run's view."""
    run_dir = Path(run_dir)
    cfg = run_dir / "config.json"
    if cfg.exists():
        config = read_json(cfg)
        if config.get("kind") == "refine" and config.get("source_run"):
            return view_dir(config["source_run"])
    return run_dir / VIEW_DIR


def _stamps(run_dir: str | Path) -> dict[str, int]:
    """mtime_ns of the run's files a view is computed from: a re-run that rewrites one makes it stale."""
    run_dir = Path(run_dir)
    files = [run_dir / "config.json", run_dir / CANDIDATES_FILE, *sorted((run_dir / "models").glob("*.safetensors"))]
    return {p.relative_to(run_dir).as_posix(): p.stat().st_mtime_ns for p in files if p.exists()}


def _meta(run_dir: str | Path) -> dict | None:
    """view/run.json when it is of this version and not stale, else None."""
    p = view_dir(run_dir) / "run.json"
    if not p.exists():
        return None
    meta = read_json(p)
    if meta.get("version") != VERSION or meta.get("stamps") != _stamps(meta.get("run_dir", "")):
        return None
    return meta


def read_view(run_dir: str | Path) -> RunView | None:
    """The run's RunView, or None when it has no (current) view folder."""
    meta = _meta(run_dir)
    if meta is None:
        return None
    return RunView(
        run_dir=Path(meta["run_dir"]),
        kind=meta["kind"],
        spec=ModelSpec.from_dict(meta["spec"]),
        trigger=Trigger.from_dict(meta["trigger"]) if meta.get("trigger") else None,
        n_train=meta["n_train"],
        n_test=meta["n_test"],
        layers=meta["layers"],
        train_classes=tuple(meta.get("train_classes", ())),
    )


def top_images(run_dir: str | Path) -> dict[int, tuple[np.ndarray, int | None]]:
    """Training-sample index → (uint8 (C, H, W), label or None) of the rows kept at the end of the
    run ({} when none were)."""
    p = view_dir(run_dir) / "train_top.npz"
    if _meta(run_dir) is None or not p.exists():
        return {}
    with np.load(p) as z:
        labels = [None if v < 0 else v for v in z["labels"].tolist()]
        return dict(zip(z["index"].tolist(), zip(z["images"], labels, strict=True), strict=True))


def load_teacher(run_dir: str | Path) -> tuple[nn.Module, ModelSpec] | None:
    """The run's teacher on the CPU without its image sets, from the file the view recorded (the
    demo's stage file, or the CPU copy an audit's view saved); None when there is none (then rebuild
    the run, `kdcore.runs.rebuild.load_context`)."""
    meta = _meta(run_dir)
    if meta is None or not meta.get("teacher_file") or not Path(meta["teacher_file"]).is_file():
        return None
    spec = ModelSpec.from_dict(meta["spec"])
    return load_model(meta["teacher_file"], spec, CPU)[0], spec


def top_candidates(run_dir: str | Path, n: int) -> tuple[Candidate, ...] | None:
    """The first `n` rows of the run's candidates.csv from top.csv, or None when the view has not
    kept that many (then read candidates.csv)."""
    p = Path(run_dir) / VIEW_DIR / "top.csv"
    if n > TOP_ROWS or _meta(run_dir) is None or not p.exists():
        return None
    return read_candidates(p)[:n]


def candidates(run_dir: str | Path) -> tuple[Candidate, ...] | None:
    """All rows of the run's candidates.csv, exactly as `read_candidates` returns them, from the
    view's columnar copy; None when the view has none or is stale (then read candidates.csv)."""
    p = Path(run_dir) / VIEW_DIR / CANDIDATES_COLUMNS
    if _meta(run_dir) is None or not p.exists():
        return None
    with np.load(p) as z:
        return from_columns({k: z[k] for k in z.files})


def stored(run_dir: str | Path, name: str) -> dict[str, np.ndarray] | None:
    """The arrays explain.npz holds under `name` (a `*_key`), or None."""
    p = view_dir(run_dir) / "explain.npz"
    if _meta(run_dir) is None or not p.exists():
        return None
    with np.load(p) as z:
        found = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{name}/")}
    return found or None


def stored_norms(run_dir: str | Path, name: str) -> dict[str, dict[str, NormStats]] | None:
    """`compare_norms`' result stored under `name`, or None."""
    arrays = stored(run_dir, name)
    if arrays is None:
        return None
    out: dict[str, dict[str, NormStats]] = {}
    for k, v in arrays.items():  # "<model>/<condition>/<norm>"
        model, cond, norm = k.split("/")
        out.setdefault(model, {}).setdefault(cond, {})[norm] = v
    return {m: {c: NormStats.from_dict(d) for c, d in conds.items()} for m, conds in out.items()}


# ── writing it at the end of a run ───────────────────────────────────────────────────────────────


def write_views(ctx: RunContext, teacher_file: str | Path | None = None) -> float:
    """Write `<run_dir>/view/` for a finished run; returns the seconds it took.

    `ctx`: what the run worked on (kdcore.run_context); every model is read back from its file on the
    CPU, as the page reads it, so what is stored is what the page would compute.
    `teacher_file`: a .safetensors kdcore wrote with the teacher's weights (the demo's stage file);
    without one the CPU copy is saved as view/teacher.safetensors (an audit's model, so the page
    loads it without a sandboxed read of the upload). Either is recorded for `load_teacher`."""
    t0 = time.perf_counter()
    out = Path(ctx.run_dir) / VIEW_DIR
    out.mkdir(parents=True, exist_ok=True)
    if teacher_file is None:
        teacher_file = save_model(ctx.teacher, ctx.spec, out / "teacher.safetensors")
    # the teacher as the page reads it (`load_teacher`): the same file, on the CPU, in its loaded mode
    teacher = load_model(teacher_file, ctx.spec, CPU)[0]
    loaded = {"teacher": (teacher, ctx.spec)}
    for name in ctx.available_models()[1:2]:  # Explain compares the teacher with the first other model
        loaded[name] = ctx.model(name, CPU)
    layers = layer_report(teacher, ctx.spec)
    arrays: dict[str, np.ndarray] = {}
    top = _candidate_files(ctx, out)
    if top:
        idx = torch.tensor(top, dtype=torch.long)
        labels = np.full(len(top), -1) if ctx.train.labels is None else ctx.train.labels[idx].numpy()
        buf = _npz({"index": idx.numpy(), "images": ctx.train.images[idx].numpy(), "labels": labels})
        atomic_write_bytes(out / "train_top.npz", buf)
    layer = layers["last_conv"]
    if layer is not None and layers["conv"]:
        arrays |= _explain_defaults(ctx, loaded, layer, top)
    atomic_write_bytes(out / "explain.npz", _npz(arrays))
    meta = {
        "version": VERSION,
        "run_dir": str(ctx.run_dir),
        "kind": ctx.kind,
        "spec": ctx.spec.to_dict(),
        "trigger": ctx.trigger.to_dict() if ctx.trigger is not None else None,
        "n_train": 0 if ctx.train is None else len(ctx.train),
        "n_test": 0 if ctx.test is None else len(ctx.test),
        "train_classes": [] if ctx.train is None else list(ctx.train.class_names),
        "layers": layers,
        "stamps": _stamps(ctx.run_dir),
        "teacher_file": str(teacher_file) if teacher_file else "",
    }
    atomic_write_json(out / "run.json", meta)  # last: its presence says the view is complete
    seconds = time.perf_counter() - t0
    log.info("view: wrote what the dashboard's first visit needs in %.1f s", seconds)
    return seconds


def _candidate_files(ctx: RunContext, out: Path) -> list[int]:
    """Write candidates.npz and top.csv from one read of candidates.csv; the training-set indices
    of top.csv's rows."""
    p = Path(ctx.run_dir) / CANDIDATES_FILE
    if ctx.train is None or not p.exists():
        return []
    rows = read_candidates(p)
    atomic_write_bytes(out / CANDIDATES_COLUMNS, _npz(to_columns(rows)))
    write_candidates(out / "top.csv", rows[:TOP_ROWS])
    return [r.index for r in rows[:TOP_ROWS] if 0 <= r.index < len(ctx.train)]


def _explain_defaults(
    ctx: RunContext, loaded: Mapping[str, tuple[nn.Module, ModelSpec]], layer: str, top: list[int]
) -> dict:
    """Explain's first screen: the default models (teacher and the first other), at the default
    layer, on the first `EXPLAIN_PICKED` top candidates, for the default second map."""
    names = list(loaded)
    arrays: dict[str, np.ndarray] = {}
    specs = {m: at_layer(spec, layer) for m, (_, spec) in loaded.items()}
    # a trigger that cannot stamp other images (a set of triggered photos) has no triggered row here
    trigger = ctx.trigger if ctx.trigger is not None and ctx.trigger.stamps else None
    if ctx.test is not None:
        clean = norm_sample(ctx.test, trigger)
        stats = compare_norms({m: (loaded[m][0], specs[m]) for m in names}, clean, trigger, role=ACT_ROLE, relu=True)
        k = norms_key(names, layer, NORM_IMAGES, "")
        for m, conds in stats.items():
            for cond, s in conds.items():
                arrays |= {f"{k}/{m}/{cond}/{n}": v for n, v in s.to_dict().items()}
    picked = top[:EXPLAIN_PICKED]
    if not picked:
        return arrays
    idx = torch.tensor(picked, dtype=torch.long)
    images = ctx.train.images[idx]
    labels = [None if ctx.train.labels is None else int(ctx.train.labels[i]) for i in picked]
    rows = [images] + ([trigger.stamp(images)] if trigger is not None else [])
    stacked = torch.cat(rows).numpy()  # (R·N, C, H, W)
    mode = "target" if trigger is not None else "true"
    chosen = tuple(chosen_class(mode, lab, trigger) for lab in labels) * len(rows)
    for m in names:
        model, spec = loaded[m][0], specs[m]
        k = gradcam_key(m, layer, stacked, chosen)
        probs, over_pred, over_chosen = gradcam_panels(model, spec, stacked, chosen)
        arrays |= {f"{k}/probs": probs, f"{k}/over_pred": over_pred, f"{k}/over_chosen": over_chosen}
        for i in range(len(picked)):  # the activation map of each picked image: clean, + trigger
            one = stacked[i :: len(picked)]  # the batch the page would compute it on
            arrays[f"{activations_key(m, layer, one)}/acts"] = layer_activations(model, spec, one)
    return arrays


def _npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
