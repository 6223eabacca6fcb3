"""The dashboard's side of the job system: submit, cancel, retry, read logs. No training here."""

from __future__ import annotations

from pathlib import Path

from app.state import reviews, store
from kdcore.config import to_dict
from kdcore.jobs.store import Job
from kdcore.runs import DemoConfig


def submit_demo(quick: bool, seed: int = 0) -> Job:
    cfg = to_dict(DemoConfig.preset(quick, seed=seed))
    cfg["cache_dir"] = str(store().data_dir / "cache")
    return store().submit("demo", cfg, label=("quick demo" if quick else "full demo"))


def submit_audit(config: dict, label: str = "") -> Job:
    return store().submit("audit", config, label=label)


def submit_refine(source: Job, finetune: dict | None = None) -> Job:
    """Fine-tune the source audit's student again with the reviewer's current verdicts."""
    verdicts = sorted((s, v.verdict) for s, v in reviews().get(source.run_dir).items())
    cfg: dict = {"source_run": source.run_dir, "verdicts": verdicts}
    if finetune:
        cfg["finetune"] = finetune
    n = len(verdicts)
    return store().submit("refine", cfg, label=f"#{source.id} + {n} verdict{'s' * (n != 1)}", parent_id=source.id)


def log_tail(job: Job, lines: int = 30) -> str:
    p = Path(job.run_dir) / "log.txt"
    if not p.exists():
        return ""
    return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
