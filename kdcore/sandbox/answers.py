"""Checks on a sandboxed child's answer beyond its types, before the parent hands it on.

`kdcore.sandbox` rebuilds an answer from a closed set of types; where a caller shows the values
(the dashboard's model check prints layer names and problem texts), their shape is checked here
too, so a child that went wrong is refused as one (ModelLoadError) rather than crashing the page.
"""

from __future__ import annotations

from kdcore.errors import ModelLoadError
from kdcore.models.spec import ModelSpec

_ROLES = ("last_conv", "conv_activation", "penultimate")


def _strings(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def model_check(answer: object) -> tuple[ModelSpec, int, dict]:
    """`kdcore.sandbox.child.check_model`'s answer: (ModelSpec, int, a `layer_report` dict)."""
    ok = isinstance(answer, tuple) and len(answer) == 3
    spec, parameters, report = answer if ok else (None, None, None)
    ok = ok and isinstance(spec, ModelSpec) and isinstance(parameters, int) and isinstance(report, dict)
    ok = ok and _strings(report.get("conv")) and _strings(report.get("linear"))
    ok = ok and all(report.get(k) is None or isinstance(report.get(k), str) for k in _ROLES)
    problems = report.get("problems") if ok else None
    ok = ok and isinstance(problems, dict) and _strings([*problems, *problems.values()])
    if not ok:
        raise ModelLoadError("The model could not be checked safely (the sandboxed reader's answer is broken)")
    return spec, parameters, report
