"""How kdcore says its values to a person: a class, a trigger. Read on the dashboard's pages, in the
HTML report, in a report's `data.trigger` and on the command line; no torch, so a page that only
names things imports nothing heavy.

Classes. A model's classes are named (Fashion-MNIST's "Sneaker") or not: no names at all, the
indices as names ("0".."9", what `ModelSpec.names` gives when none were set), or "class 0".. names.
A named class reads "Sneaker (7)"; an unnamed one "class 7" (`class_label`), or "7" after words that
already say "class" (`class_ref`: "target class 7"). Never "class class 7", "7 (7)" or "0 0".

Triggers. `trigger_words` reads a trigger's settings (`Trigger.to_dict()` output, so no file is
opened to say it): its kind, size, place and opacity where they apply, a file by its name only,
never a path, a repr or a content hash, and the target class by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

Names = Sequence[str] | Mapping[int, str]
_UNNAMED = re.compile(r"(?:class[ _-]?)?(\d+)", re.IGNORECASE)


def is_named(name: object, c: int) -> bool:
    """False for a missing name and for names that only repeat the index ("7", "class 7", "class_7")."""
    if name is None:
        return False
    m = _UNNAMED.fullmatch(str(name).strip())
    return bool(str(name).strip()) and not (m and int(m.group(1)) == c)


def class_name(c: int, names: Names = ()) -> str | None:
    """The class's own name, or None when `names` leaves it unnamed."""
    if isinstance(names, Mapping):
        name = names.get(c)
    else:
        name = names[c] if 0 <= c < len(names) else None
    return str(name) if is_named(name, c) else None


def class_ref(c: int, names: Names = ()) -> str:
    """ "Sneaker (7)", or "7" for an unnamed class: for after a word that says "class" already."""
    name = class_name(c, names)
    return f"{name} ({c})" if name else str(c)


def class_label(c: int, names: Names = ()) -> str:
    """ "Sneaker (7)", or "class 7" for an unnamed class."""
    name = class_name(c, names)
    return f"{name} ({c})" if name else f"class {c}"


def any_named(names: Sequence[str]) -> bool:
    """Whether any of `names` (index i's name at i) is a name rather than its index."""
    return any(is_named(n, i) for i, n in enumerate(names))


KIND_WORDS = {  # a trigger kind as a person calls it
    "badnets": "BadNets square",
    "patch": "patch image",
    "blend": "blended image",
    "blended": "blended random noise",
    "sig": "SIG sine stripes",
    "wanet": "WaNet warp",
    "recovered": "trigger recovered by Neural Cleanse",
    "triggered": "triggered test images",
}
# Settings said in a fixed order, each value → words; the place (location / margin / x, y) is said once
_SAID = {
    "size": lambda v: f"{v}×{v} px",
    "color": lambda v: _colour(v),
    "alpha": lambda v: f"opacity {100 * float(v):g} %",
    "delta": lambda v: f"amplitude {v:g}",
    "frequency": lambda v: f"{v:g} cycles across the image",
    "grid_size": lambda v: f"{v}×{v} grid",
    "strength": lambda v: f"strength {v:g}",
}
# Not said: the target and source (said last), the files (said by name), a recovered trigger's run
# folder (a server path), hashes, random seeds
_UNSAID = {"kind", "target", "source", "image", "mask", "path", "run", "location", "margin", "x", "y"}
_UNSAID |= {"pattern_seed", "grid_seed", "image_sha256", "mask_sha256", "file_sha256"}


def _file_name(v: object) -> str:
    return str(v).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _colour(v: object) -> str:
    rgb = tuple(int(c) for c in v) if isinstance(v, list | tuple) else (v,)
    return {(255, 255, 255): "white", (0, 0, 0): "black"}.get(rgb) or "colour " + "/".join(map(str, rgb))


def _setting(k: str, v: object) -> str:
    try:
        return _SAID[k](v)
    except (TypeError, ValueError):  # a stored value of an unexpected type: said as it is
        return f"{k.replace('_', ' ')} {v}"


def _place(d: dict) -> str | None:
    if d.get("x") is not None and d.get("y") is not None:
        return f"top-left corner at x {d['x']}, y {d['y']}"
    if not d.get("location"):
        return None
    margin = d.get("margin")
    return f"at the {d['location']}" + (f" {margin} px from the edges" if margin else "")


def trigger_words(d: dict, class_names: Names = ()) -> str:
    """A trigger's settings (`Trigger.to_dict()` output, or a stored config's) in a person's words:
    "patch image trigger.png with mask mask.png, at the bottom-right 1 px from the edges, opacity 100 %
    → target class 1, only from class 3". Files by their names, never a path (a recovered trigger's
    run folder is not said at all); classes by name where they have one (`class_ref`)."""
    kind = str(d.get("kind") or "")
    head = KIND_WORDS.get(kind, f"{kind} trigger".strip())
    file = d.get("image") or d.get("path")
    if file:
        head += f" {_file_name(file)}"
    if d.get("mask"):
        head += f" with mask {_file_name(d['mask'])}"
    said = [head]
    for k, v in d.items():
        if k in _SAID and v is not None:
            said.append(_setting(k, v))
        if k == "color":  # a square's place after its size and colour; any other trigger's first
            said.append(_place(d))
    if "color" not in d:
        said.insert(1, _place(d))
    said += [
        f"{k.replace('_', ' ')} {_file_name(v)}"
        for k, v in d.items()
        if k not in _SAID and k not in _UNSAID and v not in (None, "")
    ]
    text = ", ".join(s for s in said if s)
    target, source = d.get("target"), d.get("source")
    if isinstance(target, int) and target >= 0:
        text += f" → target class {class_ref(target, class_names)}"
    if isinstance(source, int):
        text += f", only from class {class_ref(source, class_names)}"
    return text
