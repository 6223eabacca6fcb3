"""The Defenses page's evidence view of one finished defend job.

Method-specific views where the report's `evidence` has their keys (Neural Cleanse's per-class
mask norms and recovered triggers, ℓ∞ pruning's threshold sweep, activation clustering's
per-class split); below them, always, a generic rendering of every evidence value, the
evidence/*.png images and the downloads, so a method with unknown keys still shows everything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from app.defense_charts import mask_norms_figure, pruning_sweep_figure
from app.defenses import finding
from app.results import model_zip
from app.review_queue import thumbnail
from app.state import downloaded, fmt_duration, job_title
from kdcore.jobs.store import Job
from kdcore.report import METRICS, detection_of, evidence_of, models_of

GRID_COLUMNS = 8
SHORT_TEXT = 40  # longer strings are shown as text, not as a metric card
LONG_LIST = 40  # values of a list shown before it is cut


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def evidence_images(run_dir: str | Path) -> list[Path]:
    """evidence/*.png of a run, in natural order (mask_2 before mask_10)."""
    folder = Path(run_dir) / "evidence" if run_dir else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(folder.glob("*.png"), key=lambda p: _natural(p.stem))


@st.cache_data(show_spinner=False, max_entries=512)
def _thumb(path: str, mtime_ns: int) -> np.ndarray:
    a = np.asarray(Image.open(path))  # (H, W) grey or (H, W, C)
    return thumbnail(a if a.ndim == 2 else a.transpose(2, 0, 1))


def image_grid_ui(paths: list[Path], captions: list[str] | None = None, columns: int = GRID_COLUMNS) -> None:
    """Images in rows of `columns`, scaled up crisply (nearest neighbour), captioned."""
    captions = captions or [p.stem for p in paths]
    for start in range(0, len(paths), columns):
        cols = st.columns(columns)
        for col, p, cap in zip(cols, paths[start : start + columns], captions[start : start + columns], strict=False):
            col.image(_thumb(str(p), p.stat().st_mtime_ns), caption=cap, width="stretch")


def pick_defense_ui(done: list[tuple[Job, dict]], focus: int | None = None) -> tuple[Job, dict] | None:
    """Select one finished defend job (newest first; `focus` preselected)."""
    if not done:
        return None
    ids = [j.id for j, _ in done]
    by_id = dict(zip(ids, done, strict=True))
    index = ids.index(focus) if focus in ids else 0
    chosen = st.selectbox(
        "Defend job", ids, index=index, key="evidence-job", format_func=lambda i: job_title(by_id[i][0])
    )
    return by_id[chosen]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def result_cards_ui(report: dict) -> None:
    """The repaired model's metrics against the suspect's, and the flagged / precision / recall of the
    samples the method flagged (a repairer-detector has both)."""
    models, det = models_of(report), detection_of(report)
    suspect, repaired = models.get("teacher") or {}, models.get("repaired")
    if repaired:
        cols = st.columns(len(METRICS) + 1)
        for col, key in zip(cols, METRICS, strict=False):
            v, ref = repaired.get(key), suspect.get(key)
            delta = None if v is None or ref is None else f"{100 * (v - ref):+.1f} pts"
            col.metric(
                key,
                _pct(v),
                delta=delta,
                delta_color="inverse" if key == "asr" else "normal",
                help=f"The repaired model; the change is against the suspect model ({_pct(ref)}).",
                border=True,
            )
        cols[-1].metric("wall time", fmt_duration(report.get("method_wall_s")), border=True)
    if det:
        cols = st.columns(4)
        cols[0].metric("flagged", f"{det.get('flagged', 0):,}", help=f"of {det.get('total', 0):,}", border=True)
        cols[1].metric("precision", _pct(det.get("precision")), border=True)
        cols[2].metric("recall", _pct(det.get("recall")), border=True)
        if not repaired:
            cols[3].metric("wall time", fmt_duration(report.get("method_wall_s")), border=True)
        if det.get("precision") is None and det.get("recall") is None:
            st.caption("Precision and recall need the true poison indices, which only the demo knows.")
    if not repaired and not det:
        st.metric("wall time", fmt_duration(report.get("method_wall_s")))


# ---- method-specific views (chosen by the evidence keys they read) ---------------------------------


def _is_table(v: Any, *keys: str) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) for r in v) and all(k in v[0] for k in keys)


def neural_cleanse_ui(ev: dict, images: dict[str, Path], key: str = "nc-norms") -> None:
    classes = ev["classes"]
    top = ev.get("most_anomalous") or {}
    c = st.columns(3)
    c[0].metric("flagged classes", ", ".join(map(str, ev.get("flagged_names") or [])) or "none", border=True)
    c[1].metric("most anomalous class", _fmt(top.get("name", top.get("class"))), border=True)
    c[2].metric(
        "anomaly index",
        _fmt(top.get("anomaly_index")),
        help=f"|median − ℓ1| / (1.4826 · MAD); flagged above {_fmt(ev.get('threshold'))} (Neural Cleanse).",
        border=True,
    )
    st.plotly_chart(mask_norms_figure(classes, ev.get("threshold")), key=key, config={"displaylogo": False})
    triggers = [(r, images.get(f"trigger_{r.get('class')}")) for r in classes]
    triggers = [(r, p) for r, p in triggers if p is not None]
    if triggers:
        st.markdown("**Recovered triggers** (mask · pattern, per target class; 🚩 flagged)")
        image_grid_ui(
            [p for _, p in triggers],
            [f"{r.get('name')} · ℓ1 {_fmt(r.get('l1'))}" + (" 🚩" if r.get("flagged") else "") for r, _ in triggers],
        )
    if "stamped_example" in images:
        st.markdown("**A held-out clean image with the most anomalous class's recovered trigger**")
        image_grid_ui([images["stamped_example"]], ["stamped_example"])


def linf_pruning_ui(ev: dict) -> None:
    c = st.columns(3)
    c[0].metric("chosen threshold", _fmt(ev.get("chosen_threshold")), border=True)
    c[1].metric("pruned channels", f"{_fmt(ev.get('n_pruned'))} of {_fmt(ev.get('n_channels'))}", border=True)
    c[2].metric("agreement with the suspect", _pct(ev.get("chosen_agreement")), border=True)
    st.plotly_chart(
        pruning_sweep_figure(ev["sweep"], ev.get("chosen_threshold")), key="linf-sweep", config={"displaylogo": False}
    )
    st.caption(
        "Agreement is label-free (pruned vs suspect predictions on the clean unlabelled images) and picks the "
        "threshold; clean_acc and asr at each threshold are measurements on the test set."
    )


def activation_clustering_ui(ev: dict) -> None:
    cols = ["class", "name", "n", "small_cluster_fraction", "small_cluster_size", "silhouette", "poisoned"]
    table = pd.DataFrame(ev["classes"])
    st.dataframe(table[[c for c in cols if c in table] + [c for c in table if c not in cols]], hide_index=True)
    st.caption(
        f"A class is judged poisoned when its smaller 2-means cluster holds ≤ {_fmt(ev.get('size_threshold'))} "
        f"of it and the split's silhouette is ≥ {_fmt(ev.get('silhouette_threshold'))}; its smaller cluster is "
        f"flagged. Poisoned classes: {', '.join(map(str, ev.get('poisoned_classes') or [])) or 'none'}."
    )


def method_views_ui(ev: dict, images: dict[str, Path]) -> bool:
    """Draw the views whose keys the evidence has; False when none applies."""
    shown = False
    if _is_table(ev.get("classes"), "l1", "anomaly_index"):
        neural_cleanse_ui(ev, images)
        shown = True
    if _is_table(ev.get("sweep"), "threshold"):
        linf_pruning_ui(ev)
        shown = True
    if _is_table(ev.get("classes"), "silhouette", "small_cluster_fraction"):
        activation_clustering_ui(ev)
        shown = True
    return shown


# ---- the generic fallback --------------------------------------------------------------------------


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (int, float, bool, str))


def generic_evidence_ui(ev: dict) -> None:
    """Every evidence value: short scalars as metric cards; long text, lists of scalars and flat
    dicts as one line each (long lists cut at LONG_LIST values); lists of dicts as tables (nested
    dicts flattened to `a.b` columns); anything deeper as collapsible JSON."""
    cards = [
        (k, v)
        for k, v in ev.items()
        if isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= SHORT_TEXT)
    ]
    done = {k for k, _ in cards}
    for start in range(0, len(cards), 4):
        for col, (k, v) in zip(st.columns(4), cards[start : start + 4], strict=False):
            col.metric(k, _fmt(v))
    for k, v in ev.items():
        if k in done:
            continue
        if _scalar(v):
            st.markdown(f"**{k}**: {_fmt(v)}")
        elif isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            st.markdown(f"**{k}**")
            st.dataframe(pd.json_normalize(v), hide_index=True)
        elif isinstance(v, list) and all(_scalar(x) for x in v):
            shown = ", ".join(_fmt(x) for x in v[:LONG_LIST]) or "(none)"
            more = f", … ({len(v)} values)" if len(v) > LONG_LIST else ""
            st.markdown(f"**{k}**: {shown}{more}")
        elif isinstance(v, dict) and all(_scalar(x) for x in v.values()):
            st.markdown(f"**{k}**: " + (" · ".join(f"{a} = {_fmt(b)}" for a, b in v.items()) or "(none)"))
        else:
            st.markdown(f"**{k}**")
            st.json(v, expanded=False)


def downloads_ui(job: Job) -> None:
    run_dir = Path(job.run_dir)
    items: list[tuple[str, Any, str, str]] = []
    if (run_dir / "candidates.csv").is_file():
        items.append(
            ("candidates.csv", (run_dir / "candidates.csv").read_bytes, f"job{job.id}-candidates.csv", "text/csv")
        )
    if (run_dir / "models" / "repaired.safetensors").is_file():
        items.append(
            (
                "repaired model (.zip)",
                lambda: model_zip(run_dir, "repaired"),
                f"job{job.id}-repaired.zip",
                "application/zip",
            )
        )
    if (run_dir / "report.json").is_file():
        items.append(
            ("report.json", (run_dir / "report.json").read_bytes, f"job{job.id}-report.json", "application/json")
        )
    for col, (label, data, file_name, mime) in zip(st.columns(max(len(items), 1)), items, strict=False):
        col.download_button(
            f"⬇ {label}",
            data=downloaded(job, label, data),
            file_name=file_name,
            mime=mime,
            key=f"defdl-{job.id}-{label}",
            on_click="ignore",
        )


def evidence_ui(job: Job, report: dict) -> None:
    """Headline, result cards, method views, evidence images, every evidence value, downloads."""
    ev = evidence_of(report)
    head = finding(report)
    if head:
        st.info(head, icon="🔎")
    result_cards_ui(report)
    paths = evidence_images(job.run_dir)
    by_name = {p.stem: p for p in paths}
    specific = method_views_ui(ev, by_name)
    if paths and specific:
        with st.expander(f"All evidence images ({len(paths)})"):
            image_grid_ui(paths)
    elif paths:
        st.markdown(f"**Evidence images** ({len(paths)})")
        image_grid_ui(paths)
    if specific:
        with st.expander("All evidence values"):
            generic_evidence_ui(ev)
    elif ev:
        st.markdown("**Evidence**")
        generic_evidence_ui(ev)
    else:
        st.caption("This defense reported no evidence.")
    downloads_ui(job)


def audit_evidence_ui(job: Job, report: dict | None) -> bool:
    """The evidence an audit gathered for its own verdict (kdcore.verdict.gather: Neural Cleanse on its
    teacher, activation clustering on its training set), drawn as a defense's is; False when it has none."""
    report = report or {}
    nc, ac = report.get("neural_cleanse") or {}, report.get("activation_clustering") or {}
    has_nc, has_ac = _is_table(nc.get("classes"), "l1", "anomaly_index"), _is_table(ac.get("classes"), "silhouette")
    if not (has_nc or has_ac):
        return False
    st.markdown("**Gathered by the audit itself for its verdict**")
    if has_nc:
        st.markdown("###### Neural Cleanse on the suspect model")
        if nc.get("headline"):
            st.caption(nc["headline"])
        neural_cleanse_ui(nc, {p.stem: p for p in evidence_images(job.run_dir)}, key="audit-nc-norms")
    if has_ac:
        st.markdown("###### Activation clustering on the training set")
        activation_clustering_ui(ac)
    return True
