"""The Models page's logic: several uploaded models, each checked in the sandbox, one blind audit each
as the parts of an `audit_many` job (kdcore.runs.audit_many), and their table, ranked by P(backdoor).

The table is built from the parts as they stand (the job store's state of each, and each finished
part's report.json), with kdcore's own row and ranking (`model_row`, `ranked`), so it fills in while
the parts run; the gathering job writes the same rows to models.csv when all have ended. What the page
shows and exports never holds a server path: a model is its file name, a run its job number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app.placement import fan_outs
from app.section import Section
from app.state import STATE_ICON, access, downloaded, fmt_duration, show_error, store
from app.uploads import check_model, safe_name, save_upload, stored_spec
from app.words import reason_in_words
from kdcore.errors import KDCoreError
from kdcore.jobs.store import Job
from kdcore.models.spec import ModelSpec
from kdcore.runs.audit_many import COLUMNS, model_row, models_csv, ranked

KIND = "audit_many"
# The export's columns: the table's, without the server's paths, with each model's job number
EXPORT_COLUMNS = (*(c for c in COLUMNS if c not in ("run_dir", "path")), "job")
VERDICT_WORDS = {"backdoor": "🚨 backdoor", "no_evidence": "✅ no evidence", "inconclusive": "❔ inconclusive"}


@dataclass(frozen=True)
class CheckedModel:
    path: Path  # the stored upload
    name: str
    spec: ModelSpec  # as the sandbox read it


def models_ui(uploads: list) -> Section[list[CheckedModel] | None]:
    """Each uploaded model stored and checked in the sandbox (loads, runs a test batch), one line each.
    Every model must carry its architecture (a kdcore .safetensors, .onnx, .pt2, a timm zip): a bare
    state_dict needs its architecture picked, which New audit does for one model at a time."""
    if not uploads:
        return Section(None)
    checked, refused = [], []
    for up in uploads:
        try:
            path = save_upload(up.getvalue(), up.name)
            spec = stored_spec(str(path))
            if spec is None:
                raise KDCoreError(
                    f"{path.name} carries no architecture (a bare state_dict): audit it alone under New audit, "
                    "where its architecture can be picked, or export it with its graph (.onnx, .pt2)"
                )
            check = check_model(str(path), json.dumps(spec.to_dict()))
        except KDCoreError as e:
            refused.append(f"{safe_name(up.name)}: {show_error(e)}")
            continue
        checked.append(CheckedModel(path, path.name, check.spec))
        st.caption(
            f"✅ **{path.name}** loads: {check.spec.arch}, {check.parameters:,} parameters, "
            f"{check.output_classes} classes, input {tuple(check.spec.input_shape)}"
        )
    if refused:
        return Section(None, f"{len(refused)} model(s) cannot be audited ({'; '.join(refused)}); remove them")
    names = [m.name for m in checked]
    if len(set(names)) != len(names):
        return Section(None, "Two uploads have the same file name; rename one so the table can tell them apart")
    return Section(checked)


def shared_spec(models: list[CheckedModel] | None) -> ModelSpec | None:
    """The first model's spec when every model has the same classes (the image sets are then checked
    against them, as New audit checks them against its one model); None otherwise."""
    if not models:
        return None
    first = models[0].spec
    same = all((m.spec.num_classes, m.spec.class_names) == (first.num_classes, first.class_names) for m in models)
    return first if same else None


def models_config(models: list[CheckedModel], data: dict[str, str | None], kd: dict, extra: dict) -> dict:
    """The audit_many config: the models, and the audit settings they share."""
    shared = {"kd": kd, **extra, **{slot: path for slot, path in data.items() if path}}
    return {"models": [str(m.path) for m in models], "audit": shared}


def submit_models(config: dict, label: str = "") -> Job:
    return access().submit(KIND, config, label=label)


def models_jobs() -> list[Job]:
    return [j for j in access().jobs() if j.kind == KIND and j.group_id is None]


@st.cache_data(max_entries=512, show_spinner=False)
def _report(path: str, mtime_ns: int) -> dict:
    return json.loads(Path(path).read_text())


_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/]+/)+([^\s/]+)")  # an absolute path on the server


def without_paths(text: str) -> str:
    """`text` with every absolute path said by its last part (an error naming a model's file on the
    server names the file only)."""
    return _PATH.sub(r"\1", text)


def part_rows(job: Job) -> list[dict]:
    """One row per model of the fan-out `job`, from its parts as they stand (a retried part by its
    newest try), ranked by P(backdoor); each row with its part's job number."""
    parts = fan_outs([job, *store().group(job.id)]).get(job.id, [])
    newest = {p.run_dir: p for p in parts}
    rows = []
    for p in newest.values():
        report_path = Path(p.run_dir) / "report.json"
        report = None
        if p.state == "succeeded" and report_path.is_file():
            report = _report(str(report_path), report_path.stat().st_mtime_ns)
        error = without_paths(reason_in_words(p.error))
        row = model_row(p.config.get("model", ""), Path(p.run_dir), report, p.state, error)
        rows.append({**row, "job": p.id})
    return ranked(rows)


def progress_ui(job: Job, rows: list[dict]) -> None:
    """How many audits have ended, as a bar, while any runs."""
    ended = sum(r["state"] not in ("queued", "running") for r in rows)
    running = [r["model"] for r in rows if r["state"] == "running"]
    text = f"{ended} of {len(rows)} audits ended" + (f" · running: {', '.join(running)}" if running else "")
    if ended < len(rows):
        st.progress(ended / max(len(rows), 1), text=text)
    else:
        st.caption(f"{text} · {STATE_ICON.get(job.state, '')} table {job.state}")


def _num(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def table_markdown(rows: list[dict]) -> str:
    """The table, each model linking to its Results page (a finished audit) or its Jobs entry."""
    lines = ["| # | model | P(backdoor) | verdict | target | clean acc | time | state |", "|---" * 8 + "|"]
    for r in rows:
        page = "results" if r["state"] == "succeeded" else "jobs"
        link = f"[{r['model']}](/{page}?job={r['job']})"
        state = f"{STATE_ICON.get(r['state'], '')} {r['state']}"
        if r["error"]:
            state += f": {r['error'][:160]}"
        verdict = VERDICT_WORDS.get(r["status"], "—")
        lines.append(
            f"| {r['rank']} | {link} | {_num(r['p_backdoor'], '.2f')} | {verdict} | {r['target'] or '—'} | "
            f"{_num(r['clean_acc'], '.1%')} | {fmt_duration(r['wall_s'])} | {state.replace('|', '/')} |"
        )
    return "\n".join(lines)


def table_ui(job: Job) -> None:
    """Progress, the ranked table with a link per model, and the CSV export."""
    rows = part_rows(job)
    if not rows:
        st.info("This job has no model audits.")
        return
    progress_ui(job, rows)
    with st.container(key="models-table"):
        st.markdown(table_markdown(rows))
    if any(r["p_source"] == "status and confidence" for r in rows):
        st.caption(
            "P(backdoor) ranks the verdicts here: 0.5 + confidence / 2 for a backdoor, 0.5 for inconclusive, "
            "0.5 − confidence / 2 for no evidence; it is not a calibrated probability."
        )
    st.download_button(
        "Download the table (CSV)",
        downloaded(job, "models CSV", models_csv(rows, EXPORT_COLUMNS)),
        file_name="models.csv",
        mime="text/csv",
        key="models_csv",
    )
