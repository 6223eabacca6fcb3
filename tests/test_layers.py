"""The house's floors (README, "Code map"): every import, also one inside a function, runs from a floor
down to a floor below it or within its own floor, and no modules import each other round a loop.

A new module must be given a floor here; a module that needs one above it means a lower module is missing.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module belongs to the longest prefix that names it.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    (
        "ground",
        (
            "kdcore",
            "kdcore.errors",
            "kdcore.io",
            "kdcore.config",
            "kdcore.limits",
            "kdcore.paths",
            "kdcore.progress",
            "kdcore.device",
            "kdcore.archive",
            "kdcore.report",
            "kdcore.tables",
            "kdcore.words",
            "kdcore.third_party",
        ),
    ),
    ("data", ("kdcore.data", "kdcore.hooks", "kdcore.stages")),
    ("models", ("kdcore.models",)),
    ("sandbox", ("kdcore.sandbox",)),
    ("triggers", ("kdcore.triggers",)),
    (
        "engine",
        (
            "kdcore.loop",
            "kdcore.train",
            "kdcore.distill",
            "kdcore.detox",
            "kdcore.evaluate",
            "kdcore.candidates",
            "kdcore.pipeline",
            "kdcore.run_context",
            "kdcore.explain",
        ),
    ),
    ("defenses", ("kdcore.defenses",)),
    ("verdict", ("kdcore.verdict",)),
    ("views", ("kdcore.views",)),
    ("runs", ("kdcore.runs",)),
    ("jobs", ("kdcore.jobs",)),
    ("cli", ("kdcore.cli", "kdcore.__main__")),
    ("app", ("app", "app_pages", "streamlit_app")),
]


def floor_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for i, (_, prefixes) in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def modules() -> dict[str, Path]:
    files = [p for d in ("kdcore", "app", "app_pages") for p in (ROOT / d).rglob("*.py")] + [ROOT / "streamlit_app.py"]
    out = {}
    for p in files:
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def imports(path: Path, known: dict[str, Path]) -> dict[str, int]:
    """Our modules that `path` imports anywhere in it, each with the first line that does."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n in known:
                found.setdefault(n, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {m: imports(p, known) for m, p in known.items()}


def test_every_module_has_a_floor():
    assert [m for m in modules() if floor_of(m) is None] == []


def test_imports_only_run_downwards():
    up = []
    for m, targets in graph().items():
        for t, line in targets.items():
            if m != "kdcore" and floor_of(t) > floor_of(m):  # kdcore/__init__ names the version only
                up.append(f"{m}:{line} ({FLOORS[floor_of(m)][0]}) imports {t} ({FLOORS[floor_of(t)][0]})")
    assert up == []


def test_no_import_circles():
    """Strongly connected groups of modules (Tarjan), a package's __init__ importing its own submodules
    aside (that is its face, as in ../shared/tools/import_circles.py)."""
    g = {
        m: [t for t in ts if not (modules()[m].name == "__init__.py" and t.startswith(m + "."))]
        for m, ts in graph().items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in g:
        if v not in index:
            visit(v)
    assert circles == []
