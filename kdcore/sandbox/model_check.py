"""New audit's model check in a sandbox: what the dashboard shows before an audit is queued.

`check_model` has a `kdcore.sandbox` child load the model as `load_model` does (read, fit, test
batch) and answer with the spec, the parameter count and `kdcore.models.layers.layer_report` (the
conv / dense layers in run order, the choice per role, and per-role problems such as "no conv").
The child may run an architecture's Python file (`file:<Class>`) exactly when this process may
(`plugins.trusted()`), whatever environment the fork server was started with.

The sandbox rebuilds an answer from a closed set of types; the dashboard prints these layer names
and problem texts, so their shape is checked here too (`answer_checked`): a child that went wrong
is refused as a ModelLoadError rather than crashing the page.
"""

from __future__ import annotations

from kdcore.errors import ModelLoadError
from kdcore.models.plugins import trusted
from kdcore.models.spec import ModelSpec
from kdcore.sandbox.runner import BudgetArg, PathLike, budget_for, model_inputs, run

_ROLES = ("last_conv", "conv_activation", "penultimate")


def check_model(
    path: PathLike, spec: ModelSpec | None = None, budget: BudgetArg = "flat"
) -> tuple[ModelSpec, int, dict]:
    """(spec, parameter count, layer report) of the model file at `path` read as `spec` (None: its own)."""
    args = (str(path), spec.to_dict() if spec is not None else None, trusted())
    b, reads = budget_for(budget, path, "model"), model_inputs(path, spec)
    return answer_checked(run("kdcore.sandbox.child:check_model", args, b, ModelLoadError, path, reads=reads))


def _strings(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def answer_checked(answer: object) -> tuple[ModelSpec, int, dict]:
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
