"""Command-line flags generated from a config class, so no flag restates a default, a choice or a help.

Every leaf setting of the config (`kdcore.config.settings`) becomes one flag: `kd.distill.epochs` →
`--kd-epochs`, `kd.finetune.lr` → `--ft-lr`, `teacher.epochs` → `--teacher-epochs`, `n_clean` →
`--n-clean`. ints and floats are typed, `Literal` fields get `choices`, bools get `--x/--no-x`,
tuples take comma-separated values, and the help ends with the default (and the quick one where it
differs). A flag left out is absent from the namespace (`argparse.SUPPRESS`), so only the flags
given override the `--config` file: `given(ns)` returns them as a nested mapping for `from_dict`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kdcore.config import Setting, nest, settings
from kdcore.errors import ConfigError

# Dotted setting prefix → flag prefix (the longest match wins).
PREFIXES = {"kd.distill.": "kd-", "kd.finetune.": "ft-", "kd.": "", "finetune.": "ft-", "teacher.": "teacher-"}
# Older, shorter names that keep working next to the generated ones.
ALIASES = {
    "kd.distill.temperature": ("--temperature",),
    "kd.distill.batch_size": ("--batch-size",),
    "kd.distill.augment": ("--augment",),
}
_MARK = "@"  # dest prefix of generated flags: dest "@kd.distill.epochs"


def flag_name(path: str) -> str:
    """'kd.distill.batch_size' → '--kd-batch-size'."""
    prefix = max((p for p in PREFIXES if path.startswith(p)), key=len, default="")
    stem = PREFIXES.get(prefix, "") + path[len(prefix) :]
    return "--" + stem.replace(".", "-").replace("_", "-")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return '""' if value == "" else str(value)


def _tuple_of(item: type, name: str):
    what = {int: "integers", float: "numbers", str: "names"}[item]

    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            return tuple(item(p) for p in parts)
        except ValueError:
            raise ConfigError(f"{name} expects comma-separated {what}; got {text!r}") from None

    return parse


def _json_object(name: str):
    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{name} expects a JSON object; got {text!r} ({e})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{name} expects a JSON object like '{{\"depth\": 2}}'; got {text!r}")
        return value

    return parse


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    dest: str = "",
    instance: Any = None,
    quick: Any = None,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    names: dict[str, tuple[str, ...]] | None = None,
    objects: tuple[str, ...] = (),
) -> list[Setting]:
    """One flag per leaf setting of `cls` (defaults from `instance`, else the declared ones; `quick`
    an instance whose differing values the help also shows). `dest` prefixes the setting's path in
    the parsed result (e.g. "setup." for a sweep); `only`/`skip` select settings by path; `names`
    replaces a setting's flag names. Mappings get a flag only when named in `objects` (it takes a JSON
    object, e.g. `--arch-kwargs '{"depth": 2}'`); the others (triggers, params) are left to the caller."""
    quick_values = {s.name: s.default for s in settings(cls, quick)} if quick is not None else {}
    added = []
    for s in settings(cls, instance):
        if (s.kind == "json" and s.name not in objects) or s.name in skip or (only is not None and s.name not in only):
            continue
        flags = (names or {}).get(s.name) or (*ALIASES.get(s.name, ()), flag_name(s.name))
        shown = f"default {_show(s.default)}"
        if s.name in quick_values and quick_values[s.name] != s.default:
            shown += f"; quick: {_show(quick_values[s.name])}"
        text = f"{s.help} ({shown})" if s.help else f"({shown})"
        kw: dict[str, Any] = {
            "dest": _MARK + dest + s.name,
            "default": argparse.SUPPRESS,
            "help": text.replace("%", "%%"),
        }
        if s.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif s.kind == "choice":
            kw["choices"] = s.choices
        elif s.kind == "json":
            kw["type"], kw["metavar"] = _json_object(flags[-1]), "JSON"
        elif s.kind == "tuple":
            kw["type"], kw["metavar"] = _tuple_of(s.item, flags[-1]), "A,B,..."
        else:
            kw["type"], kw["metavar"] = {"int": int, "float": float}.get(s.kind, str), s.name.split(".")[-1].upper()
        parser.add_argument(*flags, **kw)
        added.append(s)
    return added


def given(ns: argparse.Namespace) -> dict:
    """The generated flags that were given, as a nested mapping ({"kd": {"distill": {"epochs": 3}}})."""
    return nest({k[len(_MARK) :]: v for k, v in vars(ns).items() if k.startswith(_MARK)})


def add_run_args(p: argparse.ArgumentParser, quick: str | None = None) -> None:
    """What every run command takes besides its config's settings."""
    p.add_argument("--out", type=Path, help="run directory (default: $KDAUDIT_HOME/runs/<kind>-<time>)")
    p.add_argument("--config", type=Path, help="a JSON config file (e.g. a run's config.json); flags override it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if quick:
        p.add_argument(
            "--quick",
            action="store_true",
            help=f"{quick}; with --config the quick sizes come first, then the file, then the flags",
        )


def trust_arg(p: argparse.ArgumentParser) -> None:
    """--trust-code: allow this process and its children to run an --arch-file (trust is the machine's
    choice, not the job's, so it is a flag and never a config setting)."""
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="allow --arch-file: building the model runs that Python file (the dashboard: KDAUDIT_TRUST_CODE=1)",
    )


def config_file(path: Path | None) -> dict:
    """The --config file as a mapping (its "kind" key dropped); {} without one."""
    if path is None:
        return {}
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"Cannot read --config {path}: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"--config {path} should hold a JSON object; got {type(d).__name__}")
    d.pop("kind", None)
    return d


def trigger_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    p.add_argument("--trigger", help=help)


def parsed_trigger(text: str | None) -> dict | None:
    from kdcore.triggers import parse_trigger  # a plugin registry (every trigger kind; torch)

    return parse_trigger(text).to_dict() if text else None


def triggered_test_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--triggered-test and --target: a triggered test set, the alternative to --trigger."""
    p.add_argument(
        "--triggered-test",
        metavar="PATH",
        help="folder or zip of images that already carry the trigger (<true class>/<image>, or unlabelled "
        "<image>): asr and poison_acc are measured on it; give --target too",
    )
    p.add_argument("--target", type=int, metavar="T", help="the target class of --triggered-test")


def trigger_of(a: argparse.Namespace) -> dict | None:
    """The trigger the command line gives: --trigger, or --triggered-test with --target."""
    path, target = getattr(a, "triggered_test", None), getattr(a, "target", None)
    if path is None:
        if target is not None:
            raise ConfigError("--target goes with --triggered-test; a --trigger carries its own target")
        return parsed_trigger(a.trigger)
    if a.trigger:
        raise ConfigError("Give either --trigger or --triggered-test, not both")
    if target is None:
        raise ConfigError("--triggered-test needs --target T, the class its trigger flips images to")
    return parsed_trigger(json.dumps({"kind": "triggered", "path": path, "target": target}))
