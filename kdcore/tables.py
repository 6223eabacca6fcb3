"""Plain-text tables shaped like seed 000's Table 5, for the CLI and the README."""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean, stdev

from kdcore.report import METRICS, ROLES, detection_of, headline_of, models_of


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _metric_rows(models: dict[str, dict]) -> list[str]:
    """A | Test dataset | role … | table of clean_acc / poison_acc / asr, one column per model role."""
    lines = ["| Test dataset | " + " | ".join(ROLES[r] for r in models) + " |", "|---|" + "---|" * len(models)]
    for key, label in zip(METRICS, ("Clean (clean_acc)", "Poison (poison_acc)", "asr"), strict=True):
        lines.append(f"| {label} | " + " | ".join(pct(ev.get(key)) for ev in models.values()) + " |")
    return lines


def _detection_line(d: dict, with_fp: bool) -> str:
    tail = f"flagged {d['flagged']} of {d['total']}"
    if d.get("recall") is not None or d.get("precision") is not None:
        tail += f"; precision {pct(d.get('precision'))}, recall {pct(d.get('recall'))}"
        if with_fp:
            tail += f", false_positives {d.get('false_positives')}"
    return tail


def report_table(report: dict) -> str:
    """Clean / poison accuracy and ASR of baseline, suspect (teacher), distilled and fine-tuned."""
    lines = _metric_rows(models_of(report))
    d = detection_of(report)
    if d:
        lines += ["", f"Detoxification: {_detection_line(d, True)}"]
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines)


def defense_table(report: dict) -> str:
    """A defense run: the suspect model next to the repaired one, and the detection line of what it flagged."""
    lines = [f"{report['method']} ({report['family']})"]
    models = models_of(report)
    if models:
        lines += ["", *_metric_rows(models)]
    d = detection_of(report)
    if d:
        lines += ["", f"Detection: {_detection_line(d, False)}"]
    headline = headline_of(report)
    if headline:
        lines += ["", headline]
    lines.append(f"Method time: {report.get('method_wall_s', 0):.1f} s")
    return "\n".join(lines)


def spread(values, fmt=pct) -> str:
    """One table cell over seeds: "—" without values, the value alone for one, else mean ± standard
    deviation (the deviation in the same unit, without repeating a trailing " %")."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return fmt(vals[0])
    return f"{fmt(fmean(vals))} ± {fmt(stdev(vals)).removesuffix(' %')}"


def sweep_table(rows: list[dict]) -> str:
    """Table 5 layout: columns = budget × model per scenario; with several seeds each cell is the
    mean ± standard deviation over them (n shown)."""
    cells: dict = defaultdict(list)
    for r in rows:
        cells[(r["scenario"], r["budget"], r["model"])].append(r)

    def cell(key, rs, fmt) -> str:
        return spread([r.get(key) for r in rs], fmt)

    refs = [("-", 0, "baseline", "Baseline"), ("-", 0, "backdoor", "Backdoor")]
    budgets = sorted({r["budget"] for r in rows if r["budget"]})
    scen = [s for s in ("attack", "no_attack") if any(r["scenario"] == s for r in rows)]
    cols = [c for c in refs if c[:3] in cells]
    for s in scen:
        for m, label in (("student", "Distilled"), ("finetuned", "Fine-tuned")):
            for b in budgets:
                if (s, b, m) in cells:
                    cols.append((s, b, m, f"{'attack' if s == 'attack' else 'no attack'}: {label} {b:,}"))
    lines = ["| Metric | " + " | ".join(c[3] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for key in METRICS:
        lines.append(f"| {key} | " + " | ".join(cell(key, cells[c[:3]], pct) for c in cols) + " |")
    det = [(s, b) for s in scen for b in budgets if (s, b, "student") in cells]
    if det:
        lines += ["", "| Detox | " + " | ".join(f"{s} {b:,}" for s, b in det) + " |", "|---|" + "---|" * len(det)]
        for key in ("flagged", "precision", "recall", "false_positives"):
            fmt = pct if key in ("precision", "recall") else (lambda v: f"{v:,.0f}")
            lines.append(f"| {key} | " + " | ".join(cell(key, cells[(s, b, "student")], fmt) for s, b in det) + " |")
    n = max((len({r["seed"] for r in v}) for v in cells.values()), default=0)
    if n > 1:
        lines.append(f"\nMean ± standard deviation over {n} seeds.")
    return "\n".join(lines)
