"""Plotly figures of the Defenses page: the clean_acc-vs-asr trade-off of every compared model, Neural
Cleanse's mask norms with the anomaly threshold, and the ℓ∞ pruning sweep (seed 004 §5).

Pure functions like `app.charts`: values in, `go.Figure` out, no streamlit.
"""

from __future__ import annotations

import html
from statistics import median

import plotly.graph_objects as go

from app.charts import axis_names

DEFENSE_PALETTE = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def defense_tradeoff_figure(rows: list[dict]) -> go.Figure:
    """clean_acc (y) against asr (x), one marker per model of the Defenses page's comparison.

    `rows` are its rows (model, family, clean_acc, asr, needs_labels); rows without both metrics are
    skipped. The suspect is red, the clean baseline grey, the core method's models green, each defense its own colour;
    labelled-data baselines are open markers. The best corner is the top left."""
    fig = go.Figure()
    core = {
        "suspect": ("#d62728", "diamond"),
        "reference": ("#7f7f7f", "diamond"),
        "core method": ("#2ca02c", "square"),
    }
    i = 0
    for r in rows:
        if r.get("clean_acc") is None or r.get("asr") is None:
            continue
        name = html.escape(str(r["model"]))
        color, symbol = core.get(str(r.get("family")), (None, "circle"))
        if color is None:
            color, i = DEFENSE_PALETTE[i % len(DEFENSE_PALETTE)], i + 1
        fig.add_trace(
            go.Scatter(
                x=[r["asr"]],
                y=[r["clean_acc"]],
                name=name + (" 🏷️" if r.get("needs_labels") else ""),
                mode="markers",
                marker=dict(
                    size=14, color=color, symbol=symbol + ("-open" if r.get("needs_labels") else ""), line=dict(width=2)
                ),
                hovertemplate=f"{name}<br>asr %{{x:.1%}}<br>clean_acc %{{y:.1%}}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="asr (lower is better)", tickformat=".0%", range=[-0.05, 1.05])
    fig.update_yaxes(title_text="clean_acc (higher is better)", tickformat=".1%")
    fig.update_layout(
        legend=dict(orientation="h", yanchor="top", y=-0.2), margin=dict(l=10, r=10, t=30, b=10), height=440
    )
    return fig


def mask_norms_figure(classes: list[dict], threshold: float | None = None) -> go.Figure:
    """Neural Cleanse: the ℓ1 norm of each class's recovered mask, flagged classes in red.

    `classes` are the evidence rows (class, name, l1, anomaly_index, flagged); a dashed line marks
    the median. A backdoor target needs a much smaller mask than the other classes."""
    names = axis_names([r.get("name", r.get("class")) for r in classes], len(classes))
    l1 = [r.get("l1") for r in classes]
    index = [r.get("anomaly_index") for r in classes]
    flagged = [bool(r.get("flagged")) for r in classes]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=l1,
            marker_color=["#d62728" if f else "#1f77b4" for f in flagged],
            customdata=[[i, "flagged" if f else ""] for i, f in zip(index, flagged, strict=True)],
            text=[f"{i:.2f}" if i is not None else "" for i in index],
            textposition="outside",
            hovertemplate="class %{x}<br>mask ℓ1 %{y:.1f}<br>anomaly index %{customdata[0]:.2f} "
            "%{customdata[1]}<extra></extra>",
        )
    )
    vals = [v for v in l1 if v is not None]
    if vals:
        fig.add_hline(
            y=median(vals), line_dash="dash", line_color="#7f7f7f", annotation_text=f"median {median(vals):.1f}"
        )
    title = "Mask ℓ1 per class (bar labels: anomaly index" + (f"; flagged above {threshold:g})" if threshold else ")")
    fig.update_xaxes(title_text="class", type="category")
    fig.update_yaxes(title_text="mask ℓ1 (pixels)", rangemode="tozero")
    fig.update_layout(title_text=title, margin=dict(l=10, r=10, t=40, b=10), height=380, showlegend=False)
    return fig


def pruning_sweep_figure(sweep: list[dict], chosen: float | None = None) -> go.Figure:
    """ℓ∞ pruning: clean_acc, asr and agreement against the pruning threshold (seed 004, fig. 5).

    The x axis is reversed so the sweep reads left to right (threshold falling, more neurons pruned);
    a dotted line marks the chosen threshold."""
    fig = go.Figure()
    xs = [r.get("threshold") for r in sweep]
    styles = {"clean_acc": ("#2ca02c", "solid"), "asr": ("#d62728", "solid"), "agreement": ("#7f7f7f", "dot")}
    for key, (color, dash) in styles.items():
        ys = [r.get(key) for r in sweep]
        if all(v is None for v in ys):
            continue
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                name=key,
                mode="lines+markers",
                line=dict(color=color, dash=dash),
                customdata=[r.get("n_pruned") for r in sweep],
                hovertemplate="threshold %{x:.3g} (%{customdata} pruned): %{y:.1%}<extra>" + key + "</extra>",
            )
        )
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dot", line_color="#1f77b4", annotation_text="chosen")
    fig.update_xaxes(title_text="ℓ∞ threshold (activation units; lower prunes more)", autorange="reversed")
    fig.update_yaxes(title_text="rate", tickformat=".0%", range=[0, 1.05])
    fig.update_layout(
        legend=dict(orientation="h", yanchor="top", y=-0.2), margin=dict(l=10, r=10, t=30, b=10), height=400
    )
    return fig
