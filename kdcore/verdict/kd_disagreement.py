"""The kd-disagreement piece: the structure of the teacher/student disagreements on the training set.

A backdoor's trigger overrides the image, so the samples the teacher sends to the target class while the
distilled student (which never learned the trigger) does not come from every class, and there are more of
them than the teacher's share of that class predicts. A natural confusion is between a few look-alike
classes. And the student sees a poisoned image for what it shows, so it gives the teacher's call on it
little probability; on a natural confusion the teacher's call is one the student finds plausible too
(`student_belief`). `disagreement_structure` measures all three per teacher class; `kd_evidence` turns
them into a piece.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kdcore.verdict.evidence import Evidence

# A class is a backdoor candidate when all three hold:
KD_ALPHA = 1e-3  # binomial upper-tail p-value × K (Bonferroni over the classes): a conventional strict level
KD_MIN_FLAGGED = 20  # flagged samples in the class: below this the spread of a handful says nothing
KD_MIN_SPREAD = 0.75  # spread (below): a trigger captures images of every class (quick demo: 0.94 for
#                       the BadNets target; natural confusions, e.g. Shirt ↔ T-shirt/Pullover/Coat, ≤ 0.61)


def flip_matrix(
    teacher_pred: torch.Tensor, student_pred: torch.Tensor, flagged: torch.Tensor, k: int
) -> list[list[int]]:
    """counts[t][s]: flagged samples the teacher predicts t and the student s (K × K, zero diagonal
    when `flagged` is teacher ≠ student)."""
    t, s = teacher_pred[flagged].long(), student_pred[flagged].long()
    counts = torch.bincount(t * k + s, minlength=k * k).view(k, k)
    return counts.tolist()


def student_belief(
    teacher_pred: torch.Tensor, student_conf: torch.Tensor, flagged: torch.Tensor, k: int
) -> list[float | None]:
    """Per teacher class c: the median probability the distilled student gives c on the flagged samples
    the teacher puts in c (`student_conf` is p_student(ŷ_t)); None where the teacher puts none there.
    A poisoned sample shows its source class, so the student gives the target little (the zoo's
    calibration part: median 0.06 over its backdoored models' targets); a natural confusion is one the
    student shares (the most over-represented class of its clean models: 0.19–0.43, median 0.30)."""
    t, p = teacher_pred[flagged].long(), student_conf[flagged].float()
    return [float(p[t == c].median()) if bool((t == c).any()) else None for c in range(k)]


def binomial_tail(n_hits: int, n: int, p: float) -> float:
    """P(X ≥ n_hits) for X ~ Binomial(n, p)."""
    from scipy.stats import binom  # heavy (~0.3 s): only when there are disagreements to test

    if n_hits <= 0:
        return 1.0
    return float(binom.sf(n_hits - 1, n, p))


def spread(counts: Sequence[int]) -> float:
    """exp(entropy) of a count vector over the K − 1 classes it may fall in, divided by K − 1: 1 when
    the counts are even over every other class, 1/(K − 1) when they all fall in one. `counts` is a
    row of the flip matrix with its diagonal (always 0) included, so K = len(counts)."""
    n = sum(counts)
    if n == 0 or len(counts) < 3:
        return 0.0
    h = -sum(c / n * math.log(c / n) for c in counts if c)
    return math.exp(h) / (len(counts) - 1)


def disagreement_structure(
    counts: list[list[int]], teacher_all: Sequence[int], belief: Sequence[float | None] | None = None
) -> list[dict]:
    """Per teacher class c, from the flip matrix `counts` (flagged samples) and `teacher_all` (the
    teacher's prediction count per class over ALL training samples):

        n_c       flagged samples the teacher puts in c (row sum)
        prior_c   the teacher's share of c over all samples: what c's share of the flagged would
                  be if disagreements fell on every prediction alike
        p_c       Binomial(n_flagged, prior_c) upper tail at n_c, × K (Bonferroni): is c
                  over-represented among the flagged?
        spread_c  `spread` of row c: do c's flagged samples come from (the student sees them as)
                  every other class? A trigger overrides the image, so its flips come from all
                  classes; a natural confusion is between a few look-alike classes.
        student_p `belief`'s value for c, where given (`student_belief`; not part of the candidate rule).

    A class is a candidate when p_c < KD_ALPHA, n_c ≥ KD_MIN_FLAGGED and spread_c ≥ KD_MIN_SPREAD."""
    k = len(counts)
    n_flag = sum(map(sum, counts))
    n_all = sum(teacher_all)
    rows = []
    for c in range(k):
        n_c = sum(counts[c])
        prior = teacher_all[c] / n_all if n_all else 0.0
        p = min(1.0, k * binomial_tail(n_c, n_flag, prior)) if n_flag and 0 < prior < 1 else 1.0
        sp = spread(counts[c])
        candidate = p < KD_ALPHA and n_c >= KD_MIN_FLAGGED and sp >= KD_MIN_SPREAD
        row = {
            "class": c,
            "flagged": n_c,
            "share": round(n_c / n_flag, 4) if n_flag else 0.0,
            "prior": round(prior, 4),
            "p_value": float(f"{p:.3g}"),
            "spread": round(sp, 4),
            "candidate": candidate,
        }
        if belief is not None and belief[c] is not None:
            row["student_p"] = round(float(belief[c]), 4)
        rows.append(row)
    return rows


def _belief_text(row: dict) -> str:
    return f"; the student gives the teacher's call a median {row['student_p']:.0%}" if "student_p" in row else ""


def kd_evidence(
    counts: list[list[int]] | None,
    teacher_all: Sequence[int],
    names: Sequence[str],
    belief: Sequence[float | None] | None = None,
) -> Evidence:
    """The kd-disagreement piece from the flip matrix (None: no training set, nothing to examine);
    `belief`: `student_belief` per class, where the student's probabilities are known."""
    if counts is None:
        return Evidence(
            "kd-disagreement", "No labelled training set: no teacher/student disagreements to examine.", "inconclusive"
        )
    rows = disagreement_structure(counts, teacher_all, belief)
    n_flag = sum(r["flagged"] for r in rows)
    values = {"flagged": n_flag, "classes": rows, "teacher_all": list(teacher_all)}
    cands = [r for r in rows if r["candidate"]]
    if cands:
        top = max(cands, key=lambda r: r["flagged"])
        finding = (
            f"{top['flagged']} of {n_flag} flagged samples ({top['share']:.0%}) are predicted {names[top['class']]} "
            f"by the teacher against a prior of {top['prior']:.0%} (p = {top['p_value']:.2g}), and they come from "
            f"every class (spread {top['spread']:.2f} ≥ {KD_MIN_SPREAD}){_belief_text(top)}"
        )
        return Evidence("kd-disagreement", finding, "backdoor", tuple(r["class"] for r in cands), values)
    top = max(rows, key=lambda r: r["flagged"])
    finding = (
        f"No class funnels the {n_flag} flagged samples: the largest, {names[top['class']]} ({top['flagged']}, "
        f"{top['share']:.0%} against a prior of {top['prior']:.0%}, p = {top['p_value']:.2g}, spread "
        f"{top['spread']:.2f}{_belief_text(top)}), fails p < {KD_ALPHA:g}, ≥ {KD_MIN_FLAGGED} flagged or spread "
        f"≥ {KD_MIN_SPREAD}"
        if n_flag
        else "The teacher and the student agree on every training sample"
    )
    return Evidence("kd-disagreement", finding, "no_evidence", (), values)
