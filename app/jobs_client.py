"""The dashboard's side of the job system: submit, cancel, retry, read logs. No training here."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from app.state import access, reviews, store
from app.words import in_words
from kdcore.config import to_dict
from kdcore.errors import KDCoreError
from kdcore.jobs.store import Job, validate_config
from kdcore.runs import DemoConfig


def submit_demo(quick: bool, seed: int = 0) -> Job:
    """The built-in demo as a job, audited blind: its verdict comes from label-free evidence, as a user's
    audit without a trigger would, and the known trigger only measures asr and poison_acc."""
    cfg = to_dict(DemoConfig.preset(quick, seed=seed, blind=True))
    cfg["cache_dir"] = str(store().data_dir / "cache")
    return access().submit("demo", cfg, label=("quick demo" if quick else "full demo"))


def submit_audit(config: dict, label: str = "") -> Job:
    return access().submit("audit", config, label=label)


@st.cache_data(max_entries=64, show_spinner=False)
def _accepted(kind: str, config_json: str) -> bool:
    validate_config(kind, json.loads(config_json))  # a refusal raises, and Streamlit does not cache it
    return True


def refusal(kind: str, config: dict) -> str:
    """Why the store would refuse this `kind` config when it is submitted (its own validation, in the
    page's words), or "" when it takes it. Cached by the config, whose files are named by content
    hash: a trigger's file is decoded once per config (each model of many checked once), not on every rerun."""
    try:
        _accepted(kind, json.dumps(config, sort_keys=True))
    except KDCoreError as e:
        return in_words(" ".join(str(e).split()))
    return ""


def audit_refusal(config: dict) -> str:
    return refusal("audit", config)


def submit_refine(source: Job, finetune: dict | None = None) -> Job:
    """Fine-tune the source audit's student again with the reviewer's current verdicts (a job of the
    user's own, on an audit they may review)."""
    access().open(source.id, "review", "reviewed", record=False)
    verdicts = sorted((s, v.verdict) for s, v in reviews().get(source.run_dir).items())
    cfg: dict = {"source_run": source.run_dir, "verdicts": verdicts}
    if finetune:
        cfg["finetune"] = finetune
    n = len(verdicts)
    return access().submit("refine", cfg, label=f"#{source.id} + {n} verdict{'s' * (n != 1)}", parent_id=source.id)


def log_tail(job: Job, lines: int = 30) -> str:
    p = Path(job.run_dir) / "log.txt"
    if not p.exists():
        return ""
    return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
