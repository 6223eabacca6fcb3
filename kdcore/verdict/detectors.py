"""The neural-cleanse and activation-clustering pieces: two registered methods (kdcore.defenses) read as
evidence. Each function takes the method's own numbers, so a stored report can be re-scored under other
cuts without re-running a model (kdcore.verdict.rescore).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from kdcore.defenses.base import get_defense
from kdcore.verdict.evidence import Evidence

# Activation clustering's cuts in the verdict (its own defaults: smaller cluster ≤ 0.35 of the class, from
# ART, and silhouette ≥ 0.44, from three demo seeds). Calibrated by benchmarks/verdict.py (2026-12-02,
# quick Fashion-MNIST demo, seed 0 of every attack and BadNets at 1/2/5/10 %): the size cut missed BadNets
# at 10 % (the poisons are 44 % of Sneaker), so it is dropped (0.5: the smaller cluster is never larger);
# the silhouette of every non-target class stayed ≤ 0.361 while the targets of BadNets 2/5/10 %, Blended,
# SIG, WaNet and the image patch scored 0.392–0.501, so the cut sits between them. Misses measured: BadNets
# at 1 % (0.29) and the 20 % image blend (0.25); the other pieces carry those.
AC_SIZE_THRESHOLD = 0.5
AC_SILHOUETTE_THRESHOLD = 0.38
AC_PARAMS = {"size_threshold": AC_SIZE_THRESHOLD, "silhouette_threshold": AC_SILHOUETTE_THRESHOLD}


def nc_evidence(
    anomaly_index: Sequence[float],
    l1: Sequence[float],
    threshold: float,
    names: Sequence[str],
    flagged: Sequence[int] | None = None,
    top: int | None = None,
) -> Evidence:
    """The neural-cleanse piece from NC's per-class anomaly indexes and mask ℓ1 norms. `flagged`
    and `top`: NC's own flagged and most anomalous classes; None (re-scoring) applies NC's rule to
    the numbers: ℓ1 below the median and anomaly index > `threshold`; the smallest ℓ1."""
    if flagged is None:
        median = statistics.median(l1)
        flagged = [c for c, (i, n) in enumerate(zip(anomaly_index, l1, strict=True)) if n < median and i > threshold]
    flagged = list(flagged)
    if top is None:
        top = min(range(len(l1)), key=lambda c: l1[c])  # below the median the index grows as ℓ1 shrinks
    finding = (
        f"Neural Cleanse flags {', '.join(names[c] for c in flagged)} (anomaly index {anomaly_index[top]:.2f} "
        f"> {threshold:g})"
        if flagged
        else f"Neural Cleanse flags no class: the most anomalous, {names[top]}, has index "
        f"{anomaly_index[top]:.2f} ≤ {threshold:g}"
    )
    values = {"anomaly_index": list(anomaly_index), "l1": list(l1), "threshold": threshold, "most_anomalous": top}
    return Evidence("neural-cleanse", finding, "backdoor" if flagged else "no_evidence", tuple(flagged), values)


def ac_evidence(
    rows: Sequence[dict],
    size_threshold: float,
    silhouette_threshold: float,
    names: Sequence[str],
    poisoned: Sequence[int] | None = None,
) -> Evidence:
    """The activation-clustering piece from AC's per-class table. `poisoned`: AC's own decision;
    None (re-scoring) applies AC's rule: smaller cluster ≤ `size_threshold` of the class and
    silhouette ≥ `silhouette_threshold`."""
    if poisoned is None:
        poisoned = [
            r["class"]
            for r in rows
            if r["small_cluster_fraction"] <= size_threshold and r["silhouette"] >= silhouette_threshold
        ]
    poisoned = list(poisoned)
    n_flagged = sum(r["small_cluster_size"] for r in rows if r["class"] in poisoned)
    finding = (
        f"Activation clustering splits off a small cluster in {', '.join(names[c] for c in poisoned)} "
        f"({n_flagged} samples flagged)"
        if poisoned
        else "Activation clustering finds no class with a small, well-separated cluster"
    )
    values = {"poisoned_classes": poisoned, "flagged": n_flagged}
    if rows:  # each class's silhouette, by class (the calibrated verdict reads it)
        values["silhouette"] = silhouettes(rows)
    return Evidence(
        "activation-clustering", finding, "backdoor" if poisoned else "no_evidence", tuple(poisoned), values
    )


def silhouettes(rows: Sequence[dict]) -> list[float | None]:
    """Activation clustering's per-class table as a list of silhouettes indexed by class (None: no row)."""
    by_class = {int(r["class"]): r["silhouette"] for r in rows}
    return [by_class.get(c) for c in range(max(by_class) + 1)]


def check_nc_params(params: dict) -> None:
    """ConfigError for Neural Cleanse settings that its config refuses (checked before a job is queued)."""
    get_defense("neural-cleanse").from_params(params)
