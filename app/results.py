"""The Results page's helpers: read a run's report, and draw its metric cards, confusion grid,
detox / review summaries and downloads. Figures come from `app.charts`, the HTML from `app.report_html`.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from app.charts import CONFUSION_TABLE_CSS, class_key, confusion_table_html
from app.report_html import audit_report_html
from app.state import downloaded
from kdcore.candidates import share_of
from kdcore.errors import InputError
from kdcore.io import read_json
from kdcore.jobs.store import Job
from kdcore.report import METRICS, ROLES, models_of

METRIC_HELP = {
    "clean_acc": "Accuracy on the clean test set.",
    "poison_acc": "Accuracy on the poison test set (trigger on every non-target image), w.r.t. the true labels.",
    "asr": "Attack success rate: share of triggered non-target images classified as the target. Lower is better.",
}
DETOX_HELP = {
    "flagged": "Training samples flagged as poison candidates.",
    "precision": "Share of flagged samples that are poison.",
    "recall": "Share of the known poisons that were flagged.",
    "false_positives": "Clean samples flagged (and removed).",
}


@st.cache_data(show_spinner=False, max_entries=32)
def _read_report(path: str, mtime_ns: int) -> dict:
    # mtime_ns is only part of the cache key: a re-run that rewrites report.json invalidates it.
    try:
        return read_json(path)
    except ValueError as e:
        raise InputError(f"{path} is not valid JSON ({e}); the run may have been interrupted while writing") from e


def load_report(run_dir: str | Path) -> dict | None:
    """The run's report.json, or None when it has none. st.cache_data hands every caller its own
    copy, so a page may change what it gets without touching the cache."""
    p = Path(run_dir) / "report.json" if run_dir else None
    if p is None or not p.is_file():
        return None
    return _read_report(str(p), p.stat().st_mtime_ns)


def refine_view(report: dict, source: dict | None) -> dict:
    """A refine run evaluates only the re-fine-tuned model; borrow baseline / teacher / student (and
    the class names) from its source run so it reads like an audit. Returns a new dict."""
    view = dict(report)
    if source:
        own = models_of(report)
        view |= {role: ev for role, ev in models_of(source).items() if role not in own}
        for key in ("model", "data"):
            if source.get(key) is not None and view.get(key) is None:
                view[key] = source[key]
        view["source_kind"] = source.get("kind")
        view["notes"] = [
            *report.get("notes", []),
            "Baseline, teacher and distilled models are those of the source run; fine-tuned is the re-run.",
        ]
    return view


def link_ui(page: str, label: str, job_id: int) -> None:
    """A link to another page of the app for this job (`?job=ID`).

    st.page_link only knows the pages registered by streamlit_app.py's st.navigation; when a page
    runs on its own (AppTest, `streamlit run app_pages/x.py`) fall back to a plain link to its URL path.
    """
    try:
        st.page_link(page, label=label, query_params={"job": str(job_id)})
    except StreamlitPageNotFoundError:
        st.markdown(f"[{label}](./{Path(page).stem}?job={job_id})")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def metric_cards_ui(
    report: dict,
    models: Sequence[str] | None = None,
    metrics: Sequence[str] = METRICS,
    labels: Mapping[str, str] | None = None,
) -> None:
    """One column per model, clean_acc / poison_acc / asr cards; deltas in points vs the teacher.
    `models` and `metrics` pick which (default: every model of the report, every metric); `labels`
    says a metric in other words than its name (the Lesson's)."""
    models_ev = {m: ev for m, ev in models_of(report).items() if models is None or m in models}
    if not models_ev:
        st.info("No model was evaluated: the run had no labelled test set.")
        return
    teacher = models_of(report).get("teacher") or {}
    for col, (model, ev) in zip(st.columns(len(models_ev)), models_ev.items(), strict=True):
        col.markdown(f"**{ROLES[model]}**")
        for key in metrics:
            v, ref = ev.get(key), teacher.get(key)
            delta = None
            if model != "teacher" and v is not None and ref is not None:
                delta = f"{100 * (v - ref):+.1f} pts vs teacher"
            col.metric(
                (labels or {}).get(key, key),
                _pct(v),
                delta=delta,
                delta_color="inverse" if key == "asr" else "normal",
                help=METRIC_HELP[key],
                border=True,
            )


def scaled_metric_ui(col, label: str, n: int, total: int, help: str | None = None) -> None:
    """A count with its scale: the count large, "of 10,000 (21 %)" under it in grey (never cut off,
    as one long value in a narrow column would be)."""
    col.metric(label, f"{n:,}", delta=share_of(n, total), delta_color="off", delta_arrow="off", help=help)


def detox_summary_ui(detox: dict | None, labels: Mapping[str, str] | None = None) -> None:
    """flagged (of the training samples) / precision / recall / false_positives of the detoxification;
    `labels` says them in other words than their names (the Lesson's)."""
    if not detox:
        st.info("No detoxification: the run had no labelled training set.")
        return
    say = lambda key: (labels or {}).get(key, key)
    c = st.columns(4)
    n, total = detox.get("flagged", 0), detox.get("total", 0)
    scaled_metric_ui(c[0], say("flagged"), n, total, help=DETOX_HELP["flagged"])
    c[1].metric(say("precision"), _pct(detox.get("precision")), help=DETOX_HELP["precision"])
    c[2].metric(say("recall"), _pct(detox.get("recall")), help=DETOX_HELP["recall"])
    fp = detox.get("false_positives")
    c[3].metric(say("false_positives"), "—" if fp is None else f"{fp:,}", help=DETOX_HELP["false_positives"])
    if detox.get("precision") is None and detox.get("recall") is None:
        st.caption("Precision and recall need the true poison indices, which only the demo and sweeps know.")


def review_summary_ui(review: dict | None) -> None:
    """What the reviewer's verdicts changed in a refine run."""
    if not review:
        return
    v = review.get("verdicts") or {}
    c = st.columns(6)
    for i, key in enumerate(("poison", "clean", "unsure")):
        c[i].metric(f"verdicts: {key}", f"{v.get(key, 0):,}")
    c[3].metric("cleared", f"{review.get('cleared', 0):,}", help="Flagged by detox, judged clean: kept.")
    c[4].metric("added", f"{review.get('added', 0):,}", help="Not flagged, judged poison: removed.")
    c[5].metric(
        "removed",
        f"{review.get('removed', 0):,}",
        help=f"Removed in the end (detox flagged {review.get('flagged_by_detox', 0):,}).",
    )


def confusion_grid_ui(report: dict, class_names: tuple[str, ...]) -> None:
    """Models side by side (baseline | teacher | student | fine-tuned); clean row above, poison below.
    Each matrix is a coloured table (`confusion_table_html`): eight of them draw at once, where eight
    plotly heatmaps took about a second of the browser's time on a first visit."""
    models = models_of(report)
    if not models:
        return
    st.html(CONFUSION_TABLE_CSS)
    k = 0
    for which, title in (("confusion_clean", "Clean test set"), ("confusion_poison", "Poison test set")):
        st.markdown(f"**{title}**")
        for col, (model, ev) in zip(st.columns(len(models)), models.items(), strict=True):
            matrix = ev.get(which)
            if not matrix:
                col.caption(f"{ROLES[model]}: not measured" + (" (no trigger given)" if "poison" in which else ""))
                continue
            k = len(matrix)
            with col.container(key=f"cm-{model}-{which}"):
                st.html(confusion_table_html(matrix, class_names, ROLES[model]))
    key = class_key(class_names, k)
    st.caption("Hover a cell for it in words." + (f" Classes: {key}." if key else ""))


def model_zip(run_dir: Path, name: str = "finetuned") -> bytes:
    """The saved model, its spec and, for an architecture defined by a file (ONNX, torch.export, a
    Python class), that file (`<name>.source<suffix>`, as `save_model` copied it), side by side."""
    buf = io.BytesIO()
    models = run_dir / "models"
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in [models / f"{name}.safetensors", models / f"{name}.json", *sorted(models.glob(f"{name}.source.*"))]:
            if p.is_file():
                z.write(p, p.name)  # side by side, as kdcore.models.loading.read_spec expects
    return buf.getvalue()


def downloads_ui(job: Job, report: dict) -> None:
    """Download buttons for what the run wrote, and the HTML report of `report`; each click goes to the trail.

    The model archive and the HTML report (plotly.js inline, ~5 MB) are built only on click."""
    run_dir = Path(job.run_dir)
    files = [
        ("report.json", "application/json"),
        ("candidates.csv", "text/csv"),
        ("sweep.json", "application/json"),
        ("sweep.csv", "text/csv"),
    ]
    items: list[tuple[str, object, str, str]] = [
        (name, (run_dir / name).read_bytes, name, mime) for name, mime in files if (run_dir / name).is_file()
    ]
    if (run_dir / "models" / "finetuned.safetensors").is_file():
        items.append(
            ("fine-tuned model (.zip)", lambda: model_zip(run_dir), f"job{job.id}-finetuned.zip", "application/zip")
        )
    items.append(
        ("HTML report", lambda: audit_report_html(job, report), f"kdaudit-job{job.id}-report.html", "text/html")
    )
    for col, (label, data, file_name, mime) in zip(st.columns(len(items)), items, strict=True):
        col.download_button(
            f"⬇ {label}",
            data=downloaded(job, label, data),  # the click is written to the access trail
            file_name=file_name,
            mime=mime,
            key=f"dl-{job.id}-{file_name}",
            on_click="ignore",
            width="stretch",
        )
