"""Audit many models at once: one blind audit per model on shared data, and one table of them all.

The models come from a folder (every model file in it, and every Hugging Face-style model folder:
`find_models`) or a text file listing one path per line; each is any format the audit reads
(kdcore.runs.configs.AuditConfig.model). Every model gets the same audit settings (`audit`: the
AuditConfig fields but `model`; architecture flags apply to every model that needs them) and is
audited blind, so each has a verdict.

Steps:
  1. check every model before anything runs or is queued (`check_inputs`): it exists and loads in the
     sandbox with a test batch; the models that cannot be audited are named, each with why;
  2. one audit per model, in `parts/<NNN>-<name>/` under this run: in this process (`kdcore
     audit-many`), or as the part jobs of a fan-out (`audit_many_parts`, `kdcore jobs submit
     audit-many`, the dashboard's Models page) that any executor runs side by side;
  3. gather (`gather_rows`): one row per model from its report.json, or from what its run left when
     it failed (`kdcore.runs.common.read_outcome`): a failed model is a row saying why, never the end
     of the whole; written as models.csv and in report.json, sorted by P(backdoor), highest first.

P(backdoor) (`p_backdoor`): the verdict's own `p_backdoor` when the report has one (a calibrated
probability). Older verdicts have only a status and a confidence; their sort key is then 0.5 +
confidence / 2 for "backdoor", 0.5 − confidence / 2 for "no_evidence" and 0.5 for "inconclusive"
(`p_source` says which): a ranking that keeps every backdoor above every inconclusive above every
no_evidence, not a calibrated probability. A model without a verdict sorts last.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from kdcore import sandbox
from kdcore.config import from_dict, setting, to_dict
from kdcore.errors import Cancelled, ConfigError, InputError, KDCoreError
from kdcore.io import atomic_write_text, read_json
from kdcore.models.loading import GRAPH_FORMATS, PICKLE_SUFFIXES, SAFETENSORS_SUFFIX
from kdcore.progress import ProgressFn, no_progress
from kdcore.report import verdict_of
from kdcore.runs.audit import run_audit
from kdcore.runs.common import environment, read_outcome, start_run, write_outcome, write_report
from kdcore.runs.configs import AuditConfig

log = logging.getLogger("kdcore")

MODEL_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES, *GRAPH_FORMATS)  # what a folder's model files end with
PER_MODEL = ("model", "blind")  # AuditConfig fields that are not shared: each model's own, and always blind
CALIBRATED, FROM_STATUS = "calibrated", "status and confidence"  # where a row's p_backdoor comes from
# The table's columns, in models.csv's order
COLUMNS = (
    "rank",
    "model",
    "p_backdoor",
    "p_source",
    "status",
    "target",
    "confidence",
    "clean_acc",
    "wall_s",
    "state",
    "error",
    "run_dir",
    "path",
)


@dataclass(frozen=True)
class AuditManyConfig:
    models: tuple[str, ...] = setting((), "the model files (or model folders), one blind audit each")
    audit: dict = setting(
        factory=dict, help="the audit settings every model shares: AuditConfig's fields but model and blind"
    )
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    gather: bool = setting(
        False, "this job only gathers its parts' results (set by the job system when the job fans out)"
    )

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("audit-many needs at least one model: a folder of models or a file listing them")
        if len(set(self.models)) != len(self.models):
            twice = sorted({m for m in self.models if self.models.count(m) > 1})
            raise ConfigError(f"These models are listed more than once: {', '.join(twice[:5])}; list each once")
        if not isinstance(self.audit, dict):
            raise ConfigError(f"audit must be a mapping of the audit's settings; got {self.audit!r}")
        own = sorted(set(self.audit) & set(PER_MODEL))
        if own:
            raise ConfigError(
                f"{', '.join(own)} cannot be shared: each model is its own, and every audit of many is blind"
            )
        # Every model's audit config is built now, so a bad shared setting is refused before anything
        # runs; the shared settings are kept resolved (defaults filled in, an --arch-file pinned).
        first = self.part_config(self.models[0])
        object.__setattr__(self, "audit", {k: v for k, v in to_dict(first).items() if k not in PER_MODEL})

    def part_config(self, model: str) -> AuditConfig:
        """The blind audit of one model with the shared settings, on this run's device."""
        return from_dict(AuditConfig, {**self.audit, "model": model, "blind": True, "device": self.device})

    def check_inputs(self) -> None:
        """The shared data exist and every model loads (in the sandbox, with a test batch); the models
        that cannot be audited are named, each with why. A gathering job only reads its parts' results."""
        if self.gather:
            return
        refused = []
        for i, model in enumerate(self.models):
            cfg = self.part_config(model)
            if i == 0:  # the shared paths, once (a stand-in model: the models are checked below, each by name)
                replace(cfg, model=os.devnull).check_inputs()
            try:
                if not Path(model).exists():
                    raise InputError("does not exist")
                sandbox.check_model(model, cfg.model_spec())
            except KDCoreError as e:
                refused.append(f"{model_name(model)} ({' '.join(str(e).split())})")
        if refused:
            raise InputError(
                f"{len(refused)} of {len(self.models)} model(s) cannot be audited: {'; '.join(refused)}. "
                "Fix or remove them, then start again; nothing was run"
            )


def model_name(path: str) -> str:
    return Path(path).name


def _listed(text: str, base: Path) -> list[tuple[int, Path]]:
    """(line number, path) of every non-blank, non-comment line; relative paths from the list's folder."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append((n, p if p.is_absolute() else base / p))
    return out


def _is_model(p: Path) -> bool:
    if p.name.startswith("."):
        return False
    if p.is_dir():
        return (p / "config.json").is_file()  # a Hugging Face-style model folder
    return p.is_file() and p.suffix.lower() in MODEL_SUFFIXES


def find_models(source: str | os.PathLike) -> tuple[str, ...]:
    """The models of a folder (its model files and model folders, by name) or of a list file (one path
    per line, `#` comments; relative to the list's folder), as absolute paths. InputError for an empty
    folder or list, or listed paths that do not exist (each named with its line)."""
    src = Path(source).expanduser()
    if src.is_dir():
        models = sorted((p for p in src.iterdir() if _is_model(p)), key=lambda p: p.name)
        if not models:
            raise InputError(
                f"{src} holds no model: expected files ending in {', '.join(MODEL_SUFFIXES)} or model folders "
                "(config.json + model.safetensors); give the folder that holds them, or a file listing them"
            )
        return tuple(str(p.resolve()) for p in models)
    if not src.is_file():
        raise InputError(f"{src} does not exist; give a folder of models or a text file listing one per line")
    if src.suffix.lower() in MODEL_SUFFIXES:
        raise InputError(
            f"{src.name} is a model, not a folder or a list of models; give its folder, or audit it alone "
            "with `kdcore audit`"
        )
    try:
        text = src.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"Cannot read the list of models {src}: {e}; give a text file, one path per line") from e
    listed = _listed(text, src.parent)
    if not listed:
        raise InputError(f"{src} lists no model; write one model path per line")
    missing = [f"{p} (line {n})" for n, p in listed if not p.exists()]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(listed)} listed model(s) do not exist: {'; '.join(missing[:10])}"
            f"{' …' if len(missing) > 10 else ''}. Fix the paths in {src.name}; nothing was run"
        )
    return tuple(str(p.resolve()) for _, p in listed)


def named_models(models: tuple[str, ...]) -> list[tuple[str, str]]:
    """(model, its part folder): its position and its name, safe for a path (`003-suspect.onnx`)."""
    return [(m, f"{i:03d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', model_name(m))[:80]}") for i, m in enumerate(models, 1)]


def audit_many_parts(cfg: AuditManyConfig) -> tuple[AuditManyConfig, list[tuple[str, AuditConfig, str]]] | None:
    """How an audit-many job fans out: the gathering config and one blind audit per model `(kind,
    config, run dir relative to the gathering job's)`; None for a config that already gathers."""
    if cfg.gather:
        return None
    parts = [("audit", cfg.part_config(m), f"parts/{name}") for m, name in named_models(cfg.models)]
    return replace(cfg, gather=True), parts


def p_backdoor(verdict: dict | None) -> tuple[float | None, str]:
    """(the sort key, where it comes from): the verdict's calibrated `p_backdoor` when it has one, else
    one made from its status and confidence (the module docstring); (None, "") without a verdict."""
    if not verdict:
        return None, ""
    p = verdict.get("p_backdoor")
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        return float(p), CALIBRATED
    c = float(verdict.get("confidence") or 0.0)
    return {"backdoor": 0.5 + c / 2, "no_evidence": 0.5 - c / 2}.get(verdict.get("status"), 0.5), FROM_STATUS


def model_row(path: str, run_dir: Path, report: dict | None, state: str, error: str = "") -> dict:
    """One model's row: its verdict, P(backdoor), target, the teacher's clean_acc (with a test set),
    wall time, run dir, and its state and error when it did not succeed."""
    v = verdict_of(report or {})
    p, source = p_backdoor(v)
    teacher = (report or {}).get("teacher") or {}
    return {
        "model": model_name(path),
        "p_backdoor": p,
        "p_source": source,
        "status": v["status"] if v else "",
        "target": ", ".join(map(str, v.get("target_names") or v.get("target_classes") or ())) if v else "",
        "target_classes": list(v.get("target_classes") or ()) if v else [],
        "confidence": v.get("confidence") if v else None,
        "clean_acc": teacher.get("clean_acc"),
        "wall_s": (report or {}).get("wall_s"),
        "state": state,
        "error": error,
        "run_dir": str(run_dir),
        "path": path,
    }


def ranked(rows: list[dict]) -> list[dict]:
    """Sorted by P(backdoor), highest first; models without one (failed) last; ranks from 1."""
    out = sorted(rows, key=lambda r: (r["p_backdoor"] is None, -(r["p_backdoor"] or 0.0), r["model"]))
    return [{**r, "rank": i} for i, r in enumerate(out, 1)]


def part_row(path: str, run_dir: Path) -> dict:
    """A part's row from its run dir: its report when it succeeded, else what its run left (state and
    error, `read_outcome`); a part that never started says so."""
    report_path = run_dir / "report.json"
    if report_path.is_file():
        return model_row(path, run_dir, read_json(report_path), "succeeded")
    outcome = read_outcome(run_dir)
    if outcome is None:
        return model_row(path, run_dir, None, "not run", "the audit never started (cancelled, or still queued)")
    return model_row(path, run_dir, None, outcome["state"], outcome["error"])


def gather_rows(cfg: AuditManyConfig, run_dir: Path, on_progress: ProgressFn = no_progress) -> list[dict]:
    """Every model's row, from its part's run dir under `run_dir`, ranked."""
    rows = []
    for i, (model, name) in enumerate(named_models(cfg.models), 1):
        rows.append(part_row(model, run_dir / "parts" / name))
        on_progress("gather", i, len(cfg.models), {"model": model_name(model)})
    return ranked(rows)


def models_csv(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    """The table as CSV (models.csv; the dashboard's export, without the server's paths)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def models_table(rows: list[dict]) -> str:
    """The table for the terminal: rank, model, P(backdoor), verdict, target, clean_acc, time, state."""

    def num(v, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    lines = ["| # | model | P(backdoor) | verdict | target | clean_acc | wall s | state |", "|---|" + "---|" * 7]
    for r in rows:
        state = r["state"] if r["state"] == "succeeded" else f"{r['state']}: {r['error'].splitlines()[-1][:120]}"
        lines.append(
            f"| {r['rank']} | {r['model']} | {num(r['p_backdoor'], '.2f')} | {r['status'] or '—'} | "
            f"{r['target'] or '—'} | {num(r['clean_acc'], '.1%')} | {num(r['wall_s'], '.0f')} | {state} |"
        )
    if any(r["p_source"] == FROM_STATUS for r in rows):
        lines.append("\nP(backdoor) here ranks by the verdict's status and confidence; it is not calibrated.")
    return "\n".join(lines)


def _run_parts(cfg: AuditManyConfig, run_dir: Path, on_progress: ProgressFn) -> None:
    """Every model's audit in this process, one after the other; a model that fails leaves its
    outcome in its run dir and the next one runs."""
    n = len(cfg.models)
    for i, (model, name) in enumerate(named_models(cfg.models)):
        on_progress("models", i, n, {"model": model_name(model)})
        part_dir = run_dir / "parts" / name
        try:
            run_audit(cfg.part_config(model), part_dir, on_progress)
        except Cancelled:
            raise
        except KDCoreError as e:
            write_outcome(part_dir, "failed", f"{type(e).__name__}: {e}")
        except Exception as e:  # a bug in one model's audit: logged with its traceback, the others still run
            log.exception("the audit of %s failed", model)
            write_outcome(part_dir, "failed", f"{type(e).__name__}: {e}")
    on_progress("models", n, n, {})


def run_audit_many(cfg: AuditManyConfig, run_dir: str | Path, on_progress: ProgressFn = no_progress) -> dict:
    with start_run(run_dir, "audit_many", cfg, cfg.device) as (run_dir, device, resolved, t0):
        if not cfg.gather:
            _run_parts(cfg, run_dir, on_progress)
        rows = gather_rows(cfg, run_dir, on_progress)
        atomic_write_text(run_dir / "models.csv", models_csv(rows))
        report = {
            "kind": "audit_many",
            "rows": rows,
            "models": len(rows),
            "succeeded": sum(r["state"] == "succeeded" for r in rows),
            "table": models_table(rows),
            "config": resolved,
            **environment(device),
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        write_report(run_dir, report)
        return report
