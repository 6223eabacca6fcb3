"""The verdict card of the Results page and the flip matrix of KD disagreement.

`report["verdict"]` (the audit's answer: is the model backdoored, towards which class) is drawn
first on Results: the status in words and colour, the confidence, the rule in one line, and each
piece of evidence with a link to the page that shows it. `report["flip_matrix"]` (teacher class ×
student class over the flagged training samples) is a heatmap. Old reports have neither key; the
functions then draw nothing, so those pages look as they always did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import streamlit as st

from app.charts import confusion_figure
from kdcore.words import Names, class_ref

STATUS = {  # status → (colour, icon)
    "backdoor": ("red", "🚨"),
    "no_evidence": ("green", "✅"),
    "inconclusive": ("orange", "❔"),
}
SUPPORTS = {"backdoor": "🔴 backdoor", "no_evidence": "🟢 no backdoor", "inconclusive": "⚪ inconclusive"}
# Where each method's evidence is shown: (page, link label)
EVIDENCE_PAGES = {
    "kd-disagreement": ("app_pages/candidates.py", "Candidates"),
    "neural-cleanse": ("app_pages/defenses.py", "Defenses"),
    "activation-clustering": ("app_pages/defenses.py", "Defenses"),
    "recovered-trigger": ("app_pages/explain.py", "Explain"),
}


def verdict_headline(verdict: dict, class_names: Sequence[str] = ()) -> str:
    """The status in words: "Backdoor found → target class Sneaker (7)" (or "target class 7" for an
    unnamed class, `kdcore.words.class_ref`), "No evidence of a backdoor", "Inconclusive"."""
    status = verdict.get("status")
    if status == "backdoor":
        targets = [int(c) for c in verdict.get("target_classes") or []]
        names: Names = class_names
        if len(verdict.get("target_names") or []) == len(targets):  # the report's own names win: the model's
            names = dict(zip(targets, verdict["target_names"], strict=True))
        if not targets:
            return "Backdoor found (target class unknown)"
        shown = ", ".join(class_ref(c, names) for c in targets)
        return f"Backdoor found → target class{'es' if len(targets) > 1 else ''} {shown}"
    if status == "no_evidence":
        return "No evidence of a backdoor"
    if status == "inconclusive":
        return "Inconclusive"
    return f"Unknown verdict {status!r}"


def verdict_card_ui(report: dict, class_names: Sequence[str], link: Callable[[str, str], None]) -> None:
    """The verdict as a bordered card; nothing when the report has none. `link(page, label)` draws
    a link to another page of the app for this job (`app.results.link_ui`)."""
    verdict = report.get("verdict")
    if not isinstance(verdict, dict):
        return
    colour, icon = STATUS.get(verdict.get("status"), ("gray", "❓"))
    with st.container(border=True, key="verdict-card"):
        st.markdown(f"### {icon} :{colour}[{verdict_headline(verdict, class_names)}]")
        conf = verdict.get("confidence")
        parts = [f"confidence **{100 * conf:.0f} %**" if isinstance(conf, (int, float)) else "confidence —"]
        p = verdict.get("p_backdoor")
        if isinstance(p, (int, float)):
            parts.insert(0, f"P(backdoor) **{p:.2f}**")
            likely = verdict.get("likely_target")
            if verdict.get("status") != "backdoor" and isinstance(likely, int):
                tp = verdict.get("target_probability") or 0.0
                parts.insert(1, f"most likely target, were it backdoored: {class_ref(likely, class_names)} ({tp:.0%})")
        if verdict.get("rule"):
            parts.append(f"rule: {verdict['rule']}")
        st.caption(" · ".join(parts))
        if report.get("data", {}).get("trigger") and "asr" in (report.get("evaluation_only") or ()):
            st.caption("The given trigger was used only to measure asr (evaluation only), not to reach this verdict.")
        has_flip = isinstance(report.get("flip_matrix"), dict)
        for ev in verdict.get("evidence") or []:
            evidence_row_ui(ev, link, has_flip)


def evidence_row_ui(ev: dict, link: Callable[[str, str], None], has_flip: bool = False) -> None:
    """One piece of evidence: method and what it supports, the finding, a link to where it is shown."""
    method = str(ev.get("method", "?"))
    c1, c2, c3 = st.columns([2, 5, 2], vertical_alignment="center")
    c1.markdown(f"**{method}**")
    c1.caption(SUPPORTS.get(ev.get("supports"), str(ev.get("supports", ""))))
    c2.markdown(str(ev.get("finding", "")))
    page = EVIDENCE_PAGES.get(method)
    if page:
        with c3:
            link(page[0], f"→ {page[1]}")
    if method == "kd-disagreement" and has_flip:
        c3.markdown("[→ flip matrix](#flip-matrix)")


def flip_figure(flip: dict):
    """Heatmap of the flip matrix: rows = teacher's class, columns = student's class; colour = share of
    all flagged samples (so the target's row stands out), text = counts."""
    return confusion_figure(
        flip["counts"], flip.get("classes") or (), "", axes=("teacher predicts", "student predicts"), rates="total"
    )


def belief_text(report: dict, class_names: Sequence[str] = ()) -> str:
    """How much the distilled student believes the teacher's calls, per teacher class of the flip matrix
    (`student_p` in the kd-disagreement piece, kdcore.verdict.kd_disagreement.student_belief), least
    believed first; "" for a report that did not keep it."""
    pieces = (report.get("verdict") or {}).get("evidence") or []
    kd = next((e for e in pieces if isinstance(e, dict) and e.get("method") == "kd-disagreement"), {})
    rows = [r for r in (kd.get("values") or {}).get("classes") or [] if isinstance(r.get("student_p"), (int, float))]
    if not rows:
        return ""
    shown = " · ".join(
        f"{class_ref(int(r['class']), class_names)} {r['student_p']:.2f} ({r.get('flagged', '?')})"
        for r in sorted(rows, key=lambda r: r["student_p"])
    )
    return (
        "Does the student believe the teacher's calls? The median probability the distilled student gives the "
        "teacher's class on each row's samples (flagged samples in brackets), least believed first. A poisoned "
        "image shows its source class, so the student gives the target little (the zoo's backdoored models: "
        f"median 0.06); a natural confusion it shares (its clean models' largest funnels: 0.19–0.43): {shown}"
    )


def flip_matrix_ui(report: dict) -> None:
    """The flip matrix with a short reading guide; nothing when the report has none."""
    flip = report.get("flip_matrix")
    if not isinstance(flip, dict) or not flip.get("counts"):
        return
    st.subheader("Where the flagged samples flip", anchor="flip-matrix")
    st.caption(
        "Teacher class × student class over the training samples KD disagreement flagged. A backdoor "
        "funnels its poisons into one teacher row (the target); a clean model's disagreements spread."
    )
    try:
        fig = flip_figure(flip)
    except ValueError as e:
        st.warning(f"The flip matrix in this report cannot be drawn: {e}")
        return
    st.plotly_chart(fig, width="stretch", key="flip-matrix", config={"displaylogo": False})
    belief = belief_text(report, flip.get("classes") or ())
    if belief:
        st.caption(belief)
