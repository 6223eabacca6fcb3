"""A self-contained HTML audit report: one file to archive or mail, readable offline.

Holds the job's summary, the verdict and flip matrix (when the audit reached one), the
Table-5-style metrics of every model (seed 000), the detoxification numbers (counts with their
scale, and the top poison candidates under their one name, `kdcore.candidates.sample_name`), the reviewer's
changes (refine), notes, and the confusion matrices (or, for a sweep, its table and budget curves)
as interactive plotly figures. plotly.js is embedded once, inline: no CDN.
Every string that comes from a user (job label, class names, paths, notes) is escaped.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from app.charts import (
    SCENARIO_LABELS,
    class_names_of,
    confusion_figure,
    sweep_accuracy_figure,
    sweep_detox_figure,
)
from app.verdict import STATUS, SUPPORTS, flip_figure, verdict_headline
from app.words import note_in_words, report_trigger
from kdcore.candidates import FILE_NAME as CANDIDATES_FILE
from kdcore.candidates import Candidate, count_of, read_candidates
from kdcore.errors import InputError
from kdcore.report import METRICS, ROLES, detection_of, headline_of, models_of

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1240px;
       color: #1f2430; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } .meta { color: #667; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d7dbe3; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f3f5f9; }
table.kv td:first-child { background: #f7f8fb; } table.kv td { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: .5rem; }
.note { background: #eef5ff; border-left: 4px solid #4a8be0; padding: .4rem .8rem; margin: .4rem 0; }
footer { color: #889; font-size: .85rem; margin-top: 2rem; }
"""


def pct(v: Any) -> str:
    return "—" if v is None else f"{100 * float(v):.1f} %"


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.3g}"
    return f"{int(v):,}" if isinstance(v, int | float) else escape(str(v))


def _table(header: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    """An HTML table from already-escaped cells (no header row when `header` is None)."""
    head = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{f' class={cls!r}' if cls else ''}>{head}<tbody>{body}</tbody></table>"


def _kv_table(pairs: list[tuple[str, Any]]) -> str:
    rows = [[escape(k), escape(str(v))] for k, v in pairs if v not in (None, "", [], {})]
    return _table(None, rows, "kv") if rows else ""


def markdown_tables_to_html(md: str) -> str:
    """The pipe tables and plain lines that `kdcore.tables` writes, as HTML (cells escaped)."""
    out: list[str] = []
    block: list[list[str]] = []

    def flush() -> None:
        if block:
            out.append(_table(block[0], block[1:]))
            block.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            cells = [escape(c.strip()) for c in s[1:-1].split("|")]
            if not all(set(c) <= set("-: ") for c in cells):  # skip the |---| separator
                block.append(cells)
            continue
        flush()
        if s:
            out.append(f"<p>{escape(s)}</p>")
    flush()
    return "\n".join(out)


def metrics_table_html(report: dict) -> str:
    """Table 5 of seed 000: clean_acc / poison_acc / asr of every model evaluated."""
    models = models_of(report)
    if not models:
        return "<p>No model was evaluated (no labelled test set).</p>"
    rows = [[k, *(pct(ev.get(k)) for ev in models.values())] for k in METRICS]
    rows.append(
        [
            "test images (clean / poison)",
            *(f"{ev.get('n_clean', 0):,} / {ev.get('n_poison', 0):,}" for ev in models.values()),
        ]
    )
    return _table(["metric", *(escape(ROLES[m]) for m in models)], rows)


def detox_html(detox: dict | None) -> str:
    if not detox:
        return "<p>No detoxification (no labelled training set).</p>"
    pairs = [
        ("flagged", count_of(detox.get("flagged", 0), detox.get("total", 0))),
        ("kept", count_of(detox.get("kept", 0), detox.get("total", 0)) if detox.get("kept") is not None else "—"),
        ("precision", pct(detox.get("precision"))),
        ("recall", pct(detox.get("recall"))),
        ("false_positives", _num(detox.get("false_positives"))),
        ("known poisons", _num(detox.get("n_poison"))),
    ]
    return _table(None, [[k, v] for k, v in pairs], "kv")


TOP_CANDIDATES = 20  # rows of the candidates table in the report


def candidates_html(rows: tuple[Candidate, ...], n: int = TOP_CANDIDATES) -> str:
    """The top `n` poison candidates: rank, the sample's one name, label, predictions, score."""
    if not rows:
        return ""
    body = [
        [
            str(r.rank),
            escape(r.name),
            escape(r.label_name or str(r.label)),
            f"{r.teacher_pred} → {r.student_pred}" if r.teacher_pred is not None else "—",
            f"{r.score:.3f}",
            "yes" if r.flagged else "no",
        ]
        for r in rows[:n]
    ]
    flagged = sum(r.flagged for r in rows)
    return (
        f"<h3>Top {min(n, len(rows))} poison candidates</h3>"
        f"<p>Flagged {escape(count_of(flagged, len(rows)))} training samples; "
        "the full ranking is in candidates.csv.</p>"
        + _table(["rank", "sample", "label", "teacher → student (class)", "score", "flagged"], body)
    )


def _run_candidates(job: Any) -> tuple[Candidate, ...]:
    p = Path(getattr(job, "run_dir", "") or "") / CANDIDATES_FILE
    if not getattr(job, "run_dir", "") or not p.is_file():
        return ()
    try:
        return read_candidates(p)
    except InputError:  # an unreadable table is left out of the archive copy; the page reports it
        return ()


def review_html(review: dict | None) -> str:
    if not review:
        return ""
    v = review.get("verdicts") or {}
    pairs = [
        *((f"verdicts: {k}", _num(n)) for k, n in v.items()),
        ("flagged by detox", _num(review.get("flagged_by_detox"))),
        ("cleared by the reviewer (flagged → kept)", _num(review.get("cleared"))),
        ("added by the reviewer (not flagged → removed)", _num(review.get("added"))),
        ("removed in the end", _num(review.get("removed"))),
    ]
    return "<h2>Review</h2>" + _table(None, [[escape(k), val] for k, val in pairs], "kv")


def _architecture(spec: dict, report: dict) -> str:
    """The spec's architecture, the file that defines it (ONNX graph, Python class) and the user's layers."""
    if not spec.get("arch"):
        return "paper-cnn (Fashion-MNIST demo)" if report.get("kind") == "demo" else ""
    source = Path(str(spec.get("source") or "")).name
    layers = ", ".join(f"{role} = {name}" for role, name in (spec.get("layers") or {}).items())
    return spec["arch"] + (f" (from {source})" if source else "") + (f"; layers chosen: {layers}" if layers else "")


def summary_pairs(job: Any, report: dict) -> list[tuple[str, Any]]:
    """Facts about the run worth printing: what model, what data, how long, on what."""
    cfg = report.get("config") or {}
    spec = (report.get("model") or {}).get("spec") or {}
    data = report.get("data") or {}
    kd = cfg.get("kd") or {}
    distill = kd.get("distill") or {}
    pairs: list[tuple[str, Any]] = [
        ("job", f"#{job.id} {job.kind}"),
        ("label", getattr(job, "label", "")),
        ("run", Path(getattr(job, "run_dir", "") or "").name),  # its folder's name, not the server's path
        ("architecture", _architecture(spec, report)),
        ("classes", spec.get("num_classes")),
        ("input shape", "×".join(str(v) for v in spec.get("input_shape") or ())),
        ("parameters", f"{report['model']['parameters']:,}" if (report.get("model") or {}).get("parameters") else ""),
        ("dataset", data.get("dataset")),
        ("trigger", report_trigger(report, class_names_of(report))),
        ("seed", cfg.get("seed")),
        ("KD temperature", distill.get("temperature")),
        ("distillation epochs", distill.get("epochs")),
        ("device", report.get("device")),
        ("kdcore / torch", f"{report.get('kdcore', '?')} / {report.get('torch', '?')}" if report.get("kdcore") else ""),
        ("wall time", f"{report['wall_s']:.0f} s" if isinstance(report.get("wall_s"), int | float) else ""),
        ("source run", Path(report["source_run"]).name if report.get("source_run") else ""),
    ]
    for name in ("train", "test", "unlabeled", "clean_unlabeled", "poisons"):
        d = data.get(name)
        if isinstance(d, dict):
            pairs.append(
                (
                    f"{name} images",
                    f"{d.get('images', 0):,}" + (f" ({d['skipped']} skipped)" if d.get("skipped") else ""),
                )
            )
        elif isinstance(d, int):
            pairs.append((f"{name} images", f"{d:,}"))
    if report.get("kind") == "sweep":
        pairs += [
            ("budgets", ", ".join(f"{b:,}" for b in cfg.get("budgets") or ())),
            ("seeds", ", ".join(str(s) for s in cfg.get("seeds") or ())),
            ("scenarios", ", ".join(cfg.get("scenarios") or ())),
        ]
    return pairs


class _Figures:
    """Embeds figures; the first one carries plotly.js inline, the rest reuse it."""

    def __init__(self) -> None:
        self.first = True

    def __call__(self, fig: go.Figure, width: int) -> str:
        # A fixed size: a static page lays figures out once, before "responsive" could resize them.
        fig.update_layout(template="plotly_white", width=width)
        html = fig.to_html(full_html=False, include_plotlyjs=self.first, config={"displaylogo": False})
        self.first = False
        return html


def _confusion_section(report: dict, embed: _Figures) -> str:
    names = class_names_of(report)
    parts = ["<h2>Confusion matrices</h2><p>Rows: true class; columns: predicted class; colour: share of the row.</p>"]
    for which, title in (("confusion_clean", "Clean test set"), ("confusion_poison", "Poison test set")):
        figs = [
            embed(confusion_figure(ev[which], names, f"{ROLES[m]} — {title.lower()}"), 390)
            for m, ev in models_of(report).items()
            if ev.get(which)
        ]
        if figs:
            parts.append(f"<h3>{title}</h3><div class='grid'>{''.join(f'<div>{f}</div>' for f in figs)}</div>")
    return "\n".join(parts) if len(parts) > 1 else ""


def _sweep_section(report: dict, embed: _Figures) -> str:
    rows = report.get("rows") or []
    parts = ["<h2>Results (Table 5 layout)</h2>", markdown_tables_to_html(report.get("table") or "")]
    scenarios = [s for s in ("attack", "no_attack") if any(r.get("scenario") == s for r in rows)]
    if scenarios:
        parts.append("<h2>Curves over the number of clean images</h2>")
        for s in scenarios:
            parts.append(
                f"<h3>{escape(SCENARIO_LABELS.get(s, s))}</h3><div class='grid'>"
                f"<div>{embed(sweep_accuracy_figure(rows, s), 580)}</div>"
                f"<div>{embed(sweep_detox_figure(rows, s), 580)}</div></div>"
            )
    return "\n".join(parts)


def verdict_html(report: dict, embed: _Figures) -> str:
    """The verdict (status, confidence, rule, evidence) and the flip matrix; "" for a report without them."""
    parts = []
    v = report.get("verdict")
    if isinstance(v, dict):
        colour = STATUS.get(v.get("status"), ("gray", ""))[0]
        conf = v.get("confidence")
        parts += [
            "<h2>Verdict</h2>",
            f"<p style='font-size:1.3rem;font-weight:600;color:{colour}'>"
            f"{escape(verdict_headline(v, class_names_of(report)))}</p>",
            f"<p>confidence {pct(conf) if isinstance(conf, (int, float)) else '—'}"
            f" · rule: {escape(str(v.get('rule', '')))}</p>",
            _table(
                ["method", "finding", "supports"],
                [
                    [
                        escape(str(e.get("method", ""))),
                        escape(str(e.get("finding", ""))),
                        escape(SUPPORTS.get(e.get("supports"), str(e.get("supports", "")))),
                    ]
                    for e in v.get("evidence") or []
                ],
            ),
        ]
    flip = report.get("flip_matrix")
    if isinstance(flip, dict) and flip.get("counts"):
        try:
            fig = flip_figure(flip)
        except ValueError:  # a malformed matrix is left out of the archive copy, as the page warns
            return "\n".join(parts)
        parts.append("<h3>Flip matrix (teacher class × student class over the flagged samples)</h3>")
        parts.append(embed(fig, 560))
    return "\n".join(parts)


def audit_report_html(job: Any, report: dict) -> str:
    """The whole report as one HTML string. `job` is a `kdcore.jobs.store.Job` (or has id, kind, label)."""
    embed = _Figures()
    kind = report.get("kind") or job.kind
    title = f"kdaudit report — #{job.id} {kind}" + (f" — {job.label}" if getattr(job, "label", "") else "")
    finished = getattr(job, "finished_at", None)
    meta = f"Generated {time.strftime('%Y-%m-%d %H:%M')}" + (
        f" · job finished {time.strftime('%Y-%m-%d %H:%M', time.localtime(finished))}" if finished else ""
    )
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p class='meta'>{escape(meta)}</p>",
        "<h2>Summary</h2>",
        _kv_table(summary_pairs(job, report)),
        verdict_html(report, embed) if kind != "sweep" else "",
    ]
    if kind == "sweep":
        body.append(_sweep_section(report, embed))
    else:
        headline = headline_of(report)
        body += [
            f"<p class='note'>{escape(headline)}</p>" if headline else "",
            "<h2>Results (Table 5 layout)</h2>",
            metrics_table_html(report),
            "<h2>Detoxification</h2>",
            detox_html(detection_of(report)),
            candidates_html(_run_candidates(job)),
            review_html(report.get("review")),
        ]
    notes = report.get("notes") or []
    if notes:
        body.append(
            "<h2>Notes</h2>" + "".join(f"<div class='note'>{escape(note_in_words(str(n)))}</div>" for n in notes)
        )
    if kind != "sweep":
        body.append(_confusion_section(report, embed))
    body.append(
        "<footer>Method: Yoshida &amp; Fujino, “Disabling Backdoor and Identifying Poison Data by using "
        "Knowledge Distillation in Backdoor Attacks on Deep Neural Networks”, AISec 2020. "
        "Metric names: clean_acc, poison_acc, asr, flagged, precision, recall, false_positives.</footer>"
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n"
    )
