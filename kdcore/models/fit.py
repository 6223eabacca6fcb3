"""Whether a file's weights fit the architecture they are loaded into, and can give a sound audit.

`check_fits`: one ModelLoadError summarising the layers the file has and the architecture lacks (and
the reverse) and the wrongly shaped tensors, with the architecture the file looks like
(`kdcore.models.lookalike`); the full lists are its `details`. When only the last layer's first
dimension differs, it names the file's class count instead. `check_sound`: the kind of
dtype of each tensor as the architecture has it (float / integer / bool / complex), no NaN or Inf.
Used by `kdcore.models.loading.load_model` (policy item 5).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdcore.errors import ModelLoadError
from kdcore.models.spec import ModelSpec

_MAX_LISTED = 10  # problems listed per kind in one error message


def check_sound(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights that cannot give a sound audit: the wrong kind of dtype, or NaN/Inf values.

    The architecture's own state_dict says which tensors are float (weights, running statistics)
    and which are integer (BatchNorm's num_batches_tracked); float16/bfloat16 files are fine."""
    wrong, nonfinite = [], []
    for key, exp in expected.items():
        t = got[key]
        if _dtype_kind(t.dtype) != _dtype_kind(exp.dtype):
            wrong.append(f"{key} ({_dtype_name(t.dtype)}, expected {_dtype_name(exp.dtype)})")
        elif t.is_floating_point():
            native = t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
            if not bool(torch.isfinite(t if native else t.float()).all()):  # float8 has no isfinite
                nonfinite.append(key)
    problems = []
    if wrong:
        problems.append(f"tensors of the wrong type: {listing(wrong)}")
    if nonfinite:
        problems.append(f"NaN or Inf values in: {listing(nonfinite)}")
    if problems:
        raise ModelLoadError(
            f"{path.name} cannot give a sound audit; " + "; ".join(problems) + ". Upload the float weights of a "
            "healthy trained model (e.g. `model.float().state_dict()` from a checkpoint whose loss was finite)"
        )


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "complex" if dtype.is_complex else "float" if dtype.is_floating_point else "integer"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_fits(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], spec: ModelSpec, path: Path) -> None:
    """Raise one ModelLoadError listing every missing, unexpected and wrongly shaped tensor."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(got[k].shape))
        for k in expected
        if k in got and expected[k].shape != got[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    file_classes = _wrong_class_count(expected, mismatched) if not (missing or unexpected) else None
    if file_classes is not None:
        raise ModelLoadError(
            f"{path.name} has {file_classes} output classes but --num-classes is {spec.num_classes}; "
            f"pass --num-classes {file_classes}"
        )
    ours, theirs = set(_layers(list(expected))), set(_layers(list(got)))
    unknown = [layer for layer in _layers(unexpected) if layer not in ours]
    absent = [layer for layer in _layers(missing) if layer not in theirs]
    renamed_extra = [k for k in unexpected if _layer(k) in ours]  # a known layer with other tensor names
    renamed_missing = [k for k in missing if _layer(k) in theirs]
    shapes = [f"{k} (expected {list(e)}, got {list(g)})" for k, e, g in mismatched]
    problems = []
    if unknown:
        problems.append(f"the file has {len(unknown)} layer(s) the architecture does not know, e.g. {_eg(unknown)}")
    if absent:
        problems.append(f"{len(absent)} layer(s) of the architecture are missing from the file, e.g. {_eg(absent)}")
    if renamed_extra or renamed_missing:
        problems.append(
            f"tensors named differently: the file has {_eg(renamed_extra) or 'none'} where the architecture "
            f"expects {_eg(renamed_missing) or 'none'}"
        )
    if shapes:
        problems.append(f"{len(shapes)} tensor(s) have the wrong shape, e.g. {_eg(shapes, 2)}")
    from kdcore.models.lookalike import looks_like  # builds candidate architectures: only on this error path

    suggestion = looks_like({k: tuple(v.shape) for k, v in got.items()}, exclude=spec.arch) if unknown else ""
    hint = f"; it looks like {suggestion}: try --arch {suggestion}" if suggestion else ""
    raise ModelLoadError(
        f"The weights in {path.name} do not fit {spec.arch} with {spec.num_classes} classes and input "
        f"{list(spec.input_shape)}: " + "; ".join(problems) + hint + ". Check --arch, --num-classes and the "
        "input shape",
        details={
            "file": path.name,
            "arch": spec.arch,
            "unknown_layers": unknown,
            "missing_layers": absent,
            "unexpected": unexpected,
            "missing": missing,
            "wrong_shapes": shapes,
            "suggestion": suggestion,
        },
    )


def _layer(key: str) -> str:
    """A tensor's layer: `layer1.0.conv1.weight` → `layer1.0.conv1`."""
    return key.rsplit(".", 1)[0] if "." in key else key


def _layers(keys: list[str]) -> list[str]:
    return list(dict.fromkeys(_layer(k) for k in keys))  # in first-seen order


def _eg(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _wrong_class_count(expected: dict[str, torch.Tensor], mismatched: list[tuple[str, tuple, tuple]]) -> int | None:
    """The file's class count if the only mismatches are the first dim of the last layer's weight/bias."""
    weights = [k for k in expected if k.endswith(".weight")]
    if not weights:
        return None
    last = weights[-1].removesuffix("weight")  # e.g. "classifier.3."
    counts = set()
    for key, exp, got in mismatched:
        if key not in (last + "weight", last + "bias") or len(exp) != len(got) or exp[1:] != got[1:]:
            return None
        counts.add(got[0])
    return counts.pop() if len(counts) == 1 else None


def listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" … and {more} more" if more > 0 else "")
