"""Plotly figures of an audit's results: confusion matrices (seed 000, figs. 6–15), the clean-image
budget curves of a sweep (figs. 11 and 16–18) and a bar summary of every model's metrics.

Pure functions: values in, `go.Figure` out. No streamlit here, so the HTML report can use them too.
Sweep rows are the rows of `kdcore.runs.sweep` (seed, scenario, budget, model, metric names of
MISSION.md); several seeds → the mean per budget with error bars of ± one (sample) standard deviation,
and "mean ± std over N seeds" in the title; a budget with one seed has no bar.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import mean, stdev

import numpy as np
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, sequential, unlabel_rgb

from kdcore.data.builtin import FASHION_MNIST_CLASSES
from kdcore.report import METRICS, ROLES, models_of
from kdcore.words import class_name

MODEL_LABELS = ROLES  # one display name per model role (kdcore.report)
MODEL_COLORS = {
    "baseline": "#7f7f7f",
    "teacher": "#d62728",
    "student": "#1f77b4",
    "finetuned": "#2ca02c",
    "repaired": "#9467bd",
}
SCENARIO_LABELS = {"attack": "under attack", "no_attack": "no attack"}
BASELINE_BAND = 0.01  # the paper's figures shade one accuracy point below the baseline


def confusion_shares(matrix: Sequence[Sequence[int]], rates: str = "row") -> tuple[np.ndarray, np.ndarray]:
    """(counts, shares) of a square confusion matrix [true][pred]: each count's share of its row
    (`rates="row"`) or of all counts (`"total"`), 0 where the total is 0."""
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"A confusion matrix must be square and non-empty; got shape {counts.shape}")
    if rates not in ("row", "total"):
        raise ValueError(f"rates must be 'row' or 'total'; got {rates!r}")
    totals = counts.sum(axis=1, keepdims=True) if rates == "row" else np.full((len(counts), 1), counts.sum())
    return counts, np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def confusion_figure(
    matrix: Sequence[Sequence[int]],
    class_names: Sequence[str],
    title: str = "",
    axes: tuple[str, str] = ("true", "predicted"),
    rates: str = "row",
) -> go.Figure:
    """Heatmap of a confusion matrix: rows = true class, columns = predicted class.

    The colour is the row-normalised rate (so small classes read as clearly as big ones), or with
    `rates="total"` the share of all counts (the flip matrix: where the mass concentrates); the
    cell text is the count. `customdata` holds the counts too, for hover and for tests. `axes`
    names (rows, columns).
    """
    counts, shares = confusion_shares(matrix, rates)
    k = counts.shape[0]
    names = axis_names(class_names, k)
    of = "of the row" if rates == "row" else "of all"
    fig = go.Figure(
        go.Heatmap(
            z=shares,
            x=names,
            y=names,
            text=counts,
            customdata=counts,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0.0,
            zmax=1.0 if rates == "row" else max(float(shares.max()), 1e-9),  # total: the largest cell is darkest
            showscale=False,
            hovertemplate=(
                f"{axes[0]} %{{y}}<br>{axes[1]} %{{x}}<br>%{{customdata}} images (%{{z:.1%}} {of})<extra></extra>"
            ),
        )
    )
    fig.update_xaxes(title_text=axes[1], type="category", tickangle=-45 if k > 4 else 0)
    fig.update_yaxes(title_text=axes[0], type="category", autorange="reversed")
    fig.update_layout(
        title_text=html.escape(title), margin=dict(l=10, r=10, t=40 if title else 10, b=10), height=360 + 8 * k
    )
    return fig


def colour_lut(colours: Sequence[str]) -> np.ndarray:
    """(256, 3) uint8: a plotly colour scale (hex or rgb() strings, evenly spaced) interpolated, so
    figures drawn without plotly (images, HTML tables) use the same colours as its charts."""
    stops = np.array([hex_to_rgb(c) if c.startswith("#") else unlabel_rgb(c) for c in colours], dtype=float)
    at, t = np.linspace(0, 1, len(stops)), np.linspace(0, 1, 256)
    return np.stack([np.interp(t, at, stops[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


BLUES = colour_lut(sequential.Blues)  # confusion_figure's colorscale="Blues"


def confusion_table_html(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "", rates: str = "row"
) -> str:
    """A confusion matrix as a coloured HTML table: rows = true class, columns = predicted class,
    class numbers in the headers (names in their tooltips), the count in each cell, coloured by the
    row-normalised rate on plotly's Blues (as `confusion_figure`); each cell's tooltip says it in
    words. A table, not a chart: the browser draws it at once, with no charting code to load."""
    counts, shares = confusion_shares(matrix, rates)
    k = counts.shape[0]
    given = class_names if len(class_names) >= k else ()
    names = [class_name(i, given) or f"class {i}" for i in range(k)]  # "Sneaker", or "class 3" when unnamed
    top = 1.0 if rates == "row" else max(float(shares.max()), 1e-9)
    lut = BLUES[np.round(np.clip(shares / top, 0, 1) * 255).astype(np.intp)]  # (k, k, 3)
    of = "of the row" if rates == "row" else "of all"
    esc = html.escape
    head = "".join(f'<th title="predicted {esc(n)}">{j}</th>' for j, n in enumerate(names))
    rows = []
    for i, n in enumerate(names):
        cells = []
        for j in range(k):
            r, g, b = (int(v) for v in lut[i, j])
            ink = "#fff" if shares[i, j] / top > 0.55 else "#1f2430"
            tip = f"true {esc(n)} → predicted {esc(names[j])}: {counts[i, j]:,} images ({shares[i, j]:.1%} {of})"
            cells.append(f'<td style="background:rgb({r},{g},{b});color:{ink}" title="{tip}">{counts[i, j]:,}</td>')
        rows.append(f'<tr><th title="true {esc(n)}">{i}</th>{"".join(cells)}</tr>')
    caption = f'<div class="kd-cm-title">{esc(title)}</div>' if title else ""
    corner = '<th title="rows: true class, columns: predicted class">↓</th>'
    size = f"font-size: min(0.75rem, calc(100cqi / {(k + 1) * 2.0:.1f}))"  # k + 1 columns fit the width
    return f'<div class="kd-cm">{caption}<table style="{size}"><tr>{corner}{head}</tr>{"".join(rows)}</table></div>'


CONFUSION_TABLE_CSS = """<style>
.kd-cm { container-type: inline-size; }
.kd-cm-title { font-weight: 600; margin-bottom: 0.25rem; }
.kd-cm table { border-collapse: collapse; width: 100%; table-layout: fixed; font-variant-numeric: tabular-nums; }
.kd-cm th, .kd-cm td { border: 1px solid #e6e9ef; padding: 0.1em 0; text-align: center; overflow: hidden; }
.kd-cm th { color: #5a6270; font-weight: 500; background: #fafbfc; }
</style>"""


def class_key(class_names: Sequence[str], k: int) -> str:
    """'0 T-shirt/top · 1 Trouser · …': what the numbers in a confusion table's headers stand for;
    "" when they stand for nothing more (unnamed classes: no names, "0".., "class 0"..)."""
    if len(class_names) < k:
        return ""
    return " · ".join(f"{i} {n}" for i in range(k) if (n := class_name(i, class_names)))


def axis_names(class_names: Sequence[str], k: int) -> list[str]:
    # Plotly renders a subset of HTML in labels; escape user-given names so they show as typed.
    names = [html.escape(str(n)) for n in class_names][:k] if len(class_names) >= k else [str(i) for i in range(k)]
    if len(set(names)) < k:  # a categorical axis merges equal labels; keep every row apart
        names = [f"{i}: {n}" for i, n in enumerate(names)]
    return names


@dataclass(frozen=True)
class _Series:
    """One line of a sweep chart: at each budget (sorted), the mean of a metric over seeds, its sample
    standard deviation (None under 2 seeds) and the number of seeds that have the metric."""

    budgets: list[int]
    mean: list[float | None]
    std: list[float | None]
    n: list[int]

    def error_bars(self) -> dict | None:
        """± one standard deviation, or None when no budget has 2 seeds."""
        if all(sd is None for sd in self.std):
            return None
        return dict(type="data", array=self.std, visible=True, thickness=1)

    def hover(self, fmt: str) -> list[str]:
        """The spread as hover text after the mean: " ± 1.2% over 3 seeds" ("" under 2 seeds)."""
        return ["" if sd is None else f" ± {sd:{fmt}} over {n} seeds" for sd, n in zip(self.std, self.n, strict=True)]


def _mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None, 0
    return mean(vals), (stdev(vals) if len(vals) >= 2 else None), len(vals)


def _series(rows: list[dict], scenario: str, model: str, key: str) -> _Series:
    by_budget: dict[int, list] = {}
    for r in rows:
        if r.get("scenario") == scenario and r.get("model") == model:
            by_budget.setdefault(int(r["budget"]), []).append(r.get(key))
    budgets = sorted(by_budget)
    stats = [_mean_std(by_budget[b]) for b in budgets]
    return _Series(budgets, [s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats])


def seeds_note(rows: list[dict], scenario: str) -> str:
    """ "mean ± std over N seeds" when the scenario's rows come from N ≥ 2 seeds, else ""."""
    n = len({r.get("seed") for r in rows if r.get("scenario") == scenario})
    return f"mean ± std over {n} seeds" if n >= 2 else ""


def _title(what: str, rows: list[dict], scenario: str) -> str:
    note = seeds_note(rows, scenario)
    return f"{what} — {SCENARIO_LABELS.get(scenario, scenario)}" + (f" · {note}" if note else "")


def reference_value(rows: list[dict], model: str = "baseline", key: str = "clean_acc") -> float | None:
    """Mean of `key` over seeds for a reference model of the sweep (baseline or backdoor)."""
    return _mean_std(r.get(key) for r in rows if r.get("model") == model)[0]


def sweep_accuracy_figure(rows: list[dict], scenario: str) -> go.Figure:
    """Accuracy vs number of clean images (seed 000, figs. 16 and 18).

    Lines: clean_acc and poison_acc of the distilled and the fine-tuned models (mean over seeds, ± one
    standard deviation as error bars); a dashed line at the baseline's mean clean_acc with a band one
    point below it.
    """
    fig = go.Figure()
    for model in ("student", "finetuned"):
        for key, dash, symbol in (("clean_acc", "solid", "circle"), ("poison_acc", "dot", "x")):
            line = _series(rows, scenario, model, key)
            if not line.budgets:
                continue
            fig.add_trace(
                go.Scatter(
                    x=line.budgets,
                    y=line.mean,
                    name=f"{MODEL_LABELS[model]} · {key}",
                    mode="lines+markers",
                    line=dict(color=MODEL_COLORS[model], dash=dash),
                    marker=dict(symbol=symbol),
                    error_y=line.error_bars(),
                    customdata=line.hover(".1%"),
                    hovertemplate="%{x:,} clean images: %{y:.1%}%{customdata}<extra>"
                    + f"{MODEL_LABELS[model]} {key}</extra>",
                )
            )
    base = reference_value(rows, "baseline", "clean_acc")
    if base is not None:
        fig.add_hrect(
            y0=base - BASELINE_BAND,
            y1=base,
            fillcolor=MODEL_COLORS["baseline"],
            opacity=0.15,
            line_width=0,
            layer="below",
        )
        fig.add_hline(
            y=base,
            line_dash="dash",
            line_color=MODEL_COLORS["baseline"],
            annotation_text=f"baseline clean_acc {base:.1%}",
            annotation_position="bottom right",
        )
    ys = [v for t in fig.data for v in t.y if v is not None] + (
        [base - BASELINE_BAND, base] if base is not None else []
    )
    fig.update_xaxes(title_text="number of clean images", tickformat=",d")
    fig.update_yaxes(title_text="accuracy", tickformat=".0%")
    if ys:  # keep the baseline line and its band inside the plot, with a little room
        fig.update_yaxes(range=[max(0.0, min(ys) - 0.03), min(1.0, max(ys) + 0.03)])
    fig.update_layout(
        title_text=_title("Accuracy", rows, scenario),
        legend=dict(orientation="h", yanchor="top", y=-0.2),
        margin=dict(l=10, r=10, t=40, b=10),
        height=420,
    )
    return fig


def sweep_detox_figure(rows: list[dict], scenario: str) -> go.Figure:
    """False positives (bars) and precision / recall (second axis) vs clean images (figs. 11 and 17).

    Detox numbers are the same for the student and fine-tuned rows of a cell; the student's are used.
    Several seeds: their mean, ± one standard deviation as error bars.
    Without an attack precision and recall are undefined: only the false positives are drawn.
    """
    fig = go.Figure()
    fp = _series(rows, scenario, "student", "false_positives")
    if fp.budgets:
        fig.add_trace(
            go.Bar(
                x=[f"{b:,}" for b in fp.budgets],  # a categorical axis: one bar per budget, evenly spaced
                y=fp.mean,
                name="false_positives",
                marker_color="#ff7f0e",
                error_y=fp.error_bars(),
                customdata=fp.hover(",.1f"),
                hovertemplate="%{x} clean images: %{y:,.1f} false positives%{customdata}<extra></extra>",
            )
        )
    for key, dash in (("precision", "solid"), ("recall", "dot")):
        line = _series(rows, scenario, "student", key)
        if not line.budgets or all(v is None for v in line.mean):
            continue
        fig.add_trace(
            go.Scatter(
                x=[f"{v:,}" for v in line.budgets],
                y=line.mean,
                name=key,
                yaxis="y2",
                mode="lines+markers",
                line=dict(color="#9467bd", dash=dash),
                error_y=line.error_bars(),
                customdata=line.hover(".1%"),
                hovertemplate="%{x} clean images: %{y:.1%}%{customdata}<extra>" + key + "</extra>",
            )
        )
    fig.update_layout(
        title_text=_title("Detoxification", rows, scenario),
        xaxis=dict(title_text="number of clean images", type="category"),
        yaxis=dict(title_text="false positives", rangemode="tozero"),
        yaxis2=dict(
            title_text="precision / recall",
            overlaying="y",
            side="right",
            range=[0, 1.05],
            dtick=0.2,
            tickformat=".0%",
            showgrid=False,
        ),
        legend=dict(orientation="h", yanchor="top", y=-0.2),
        margin=dict(l=10, r=10, t=40, b=10),
        height=420,
    )
    return fig


def present_models(report: dict) -> list[str]:
    """The evaluated model roles of a report, in the paper's order (baseline, teacher, student, fine-tuned)."""
    return list(models_of(report))


def metric_bars(report: dict) -> go.Figure:
    """Grouped bars: clean_acc / poison_acc / asr of every evaluated model (Table 5 at a glance)."""
    fig = go.Figure()
    keys = list(METRICS)
    for model, ev in models_of(report).items():
        vals = [ev.get(k) for k in keys]
        fig.add_trace(
            go.Bar(
                x=keys,
                y=vals,
                name=MODEL_LABELS[model],
                marker_color=MODEL_COLORS[model],
                text=["—" if v is None else f"{v:.1%}" for v in vals],
                textposition="outside",
            )
        )
    fig.update_layout(
        barmode="group",
        yaxis=dict(tickformat=".0%", range=[0, 1.1]),
        legend=dict(orientation="h", yanchor="top", y=-0.15),
        margin=dict(l=10, r=10, t=30, b=10),
        height=360,
    )
    return fig


def class_names_of(report: dict) -> tuple[str, ...]:
    """Class names for a report: the audited model's spec, the demo's Fashion-MNIST names, else indices."""
    spec = (report.get("model") or {}).get("spec") or {}
    if spec.get("class_names"):
        return tuple(str(n) for n in spec["class_names"])
    if "demo" in (report.get("kind"), report.get("source_kind")):  # refine views carry their source's kind
        return FASHION_MNIST_CLASSES
    k = int(spec.get("num_classes") or 0)
    if not k:
        k = max((len(ev.get("confusion_clean") or ()) for ev in models_of(report).values()), default=0)
    return tuple(str(i) for i in range(k))
