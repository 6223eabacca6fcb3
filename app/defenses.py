"""The Defenses page's logic: run a registered defense (`kdcore.defenses`) on a finished audit as
a `defend` job, follow it, and compare every defense with the core method (KD + detox).

A defend job belongs to a source audit through its config's `source_run` (the source job's run
directory); the source job's id is only in the label. Evidence views live in `app.defense_evidence`.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from app.defense_charts import defense_tradeoff_figure
from app.defense_settings import params_from, settings_ui
from app.results import load_report
from app.state import STATE_ICON, access, fmt_duration, show_error, store
from app.uploads import check_model, save_upload
from kdcore.candidates import count_of
from kdcore.defenses import DEFENSES, Defense
from kdcore.errors import InputError, KDCoreError
from kdcore.jobs.store import Job
from kdcore.report import ROLES, detection_of, headline_of, metrics_of, models_of, seconds_of
from kdcore.views import read_view

FAMILIES = ("repairer", "repairer+detector", "detector", "inspector")
FAMILY_HELP = {
    "repairer+detector": "returns a repaired model and flags suspected poisons in the training set, as the core "
    "method does",
    "repairer": "returns a repaired model, evaluated on the same test set and trigger as the core method's models",
    "detector": "ranks the training samples and flags suspected poisons (scored like the core method's detox)",
    "inspector": "examines the model and reports evidence, e.g. a suspected target class; it changes nothing",
}
INPUT_NAMES = {
    "unlabeled": "unlabelled clean images",
    "clean_labeled": "labelled clean images",
    "train": "the labelled, possibly poisoned training set",
}
LABELLED_BASELINE = "labelled-data baseline: needs labelled clean images"
REFERENCE_ROLES = {"baseline": "reference", "teacher": "suspect"}  # the source's other models: "core method"
DETECTION = ("flagged", "precision", "recall")
NOT_MEASURED = "—"  # what the comparison prints for a value a method does not measure (not "None")


# ---- methods and the inputs a source run offers ------------------------------------------------


def methods() -> list[type[Defense]]:
    """Every registered defense: repairers, detectors, inspectors; by name within a family."""
    rank = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(DEFENSES.values(), key=lambda c: (rank.get(c.family, len(rank)), c.name))


def method_label(cls: type[Defense]) -> str:
    return f"{cls.name} · {cls.family}" + (" · 🏷️ needs labels" if cls.needs_labels else "")


def available_inputs(source: Job) -> set[str]:
    """What the defend run kind finds in the source run by itself (labelled clean images only for
    the demo, whose clean pool has labels; an audit's must be uploaded)."""
    if source.kind == "demo":
        return {"unlabeled", "clean_labeled", "train"}
    return {"unlabeled"} | ({"train"} if source.config.get("train") else set())


def method_card_ui(cls: type[Defense]) -> None:
    """Summary, paper, family and needed inputs of a method; labelled-data baselines marked."""
    st.markdown(f"**{cls.summary or cls.name}**")
    if cls.paper:
        st.caption(f"📄 {cls.paper}")
    needs = ", ".join(INPUT_NAMES.get(n, n) for n in cls.needs) or "nothing beyond the model"
    st.markdown(f"*{cls.family.capitalize()}*: {FAMILY_HELP.get(cls.family, '')}. Needs: {needs}.")
    if cls.needs_labels:
        st.warning(f"**{LABELLED_BASELINE.capitalize()}.** The core method needs none.", icon="🏷️")


# ---- submitting and following defend jobs -----------------------------------------------------


def submit_defense(source: Job, method: str, params: dict[str, Any], clean_labeled: str = "", seed: int = 0) -> Job:
    """Queue a `defend` job on `source`'s run; an invalid method or setting raises and queues nothing."""
    cfg = {
        "method": method,
        "params": params,
        "source_run": source.run_dir,
        "clean_labeled": clean_labeled,
        "seed": int(seed),
        "device": "auto",
    }
    return access().submit("defend", cfg, label=f"{method} on #{source.id}")


def defend_jobs(source: Job, states: tuple[str, ...] | None = None) -> list[Job]:
    """The defend jobs run on `source` (newest first)."""
    return [
        j
        for j in access().jobs(states=states)
        if j.kind == "defend" and j.config.get("source_run") == source.run_dir and source.run_dir
    ]


def source_of(job: Job) -> Job | None:
    """The demo / audit job whose run a defend job ran on (None when the run is not a job here)."""
    run = job.config.get("source_run")
    return next((j for j in access().jobs() if j.kind in ("demo", "audit") and j.run_dir == run), None) if run else None


def focus_from_url() -> int | None:
    """`?job=<a defend job>` → point the URL at its source audit and return the defend job's id."""
    wanted = st.query_params.get("job", "")
    if not wanted.isdigit():
        return None
    try:
        job = store().get(int(wanted))
    except InputError:
        return None
    src = source_of(job) if job.kind == "defend" and access().may(job) else None
    if src is None:
        return None
    st.query_params["job"] = str(src.id)
    return job.id


def layer_problems_ui(source: Job) -> None:
    """For an audit's model that lacks a layer some methods need (a ViT has no conv): which methods
    cannot run and which can, from the same sandboxed check as New audit's (cached per file)."""
    spec = ((load_report(source.run_dir) or {}).get("model") or {}).get("spec")
    if source.kind != "audit" or not spec or not source.config.get("model"):
        return
    try:
        view = read_view(source.run_dir)  # the audit's own layer report, kept at its end: no sandboxed load
        problems = (view.layers if view else check_model(source.config["model"], json.dumps(spec)).layers)["problems"]
    except KDCoreError as e:
        st.caption(f"The model's layers could not be checked here ({' '.join(str(e).split())}).")
        return
    for text in dict.fromkeys(problems.values()):  # conv_activation repeats last_conv's problem
        st.warning(text, icon="⚠️")


def defense_form_ui(source: Job) -> Job | None:
    """Pick a method, see what it needs, set its settings, submit. Returns the queued job."""
    classes = methods()
    cls = st.selectbox("Method", classes, format_func=method_label, key="defense-method")
    method_card_ui(cls)
    have = available_inputs(source)
    clean_file = None
    if "clean_labeled" in cls.needs and source.kind != "demo":
        clean_file = st.file_uploader(
            "Labelled clean images (.zip with one folder per class)", type=["zip"], key="defense-clean-labeled"
        )
        if clean_file is not None:
            have.add("clean_labeled")
    elif "clean_labeled" in cls.needs:
        st.caption("The demo's clean pool is used with its labels.")
    missing = [n for n in cls.needs if n not in have]
    st.markdown("**Settings**")
    raw = settings_ui(cls.name, cls.config_class)
    left, right = st.columns([1, 3])
    seed = left.number_input("seed", value=0, step=1, key="defense-seed", help="Seeds the method's randomness.")
    for n in missing:
        if n == "clean_labeled":
            st.info(f"Upload labelled clean images above to run {cls.name}.", icon="ℹ️")
        else:
            st.info(f"{cls.name} needs {INPUT_NAMES.get(n, n)}, which this audit was run without.", icon="ℹ️")
    if not right.button("▶ Run this defense", type="primary", key="defense-submit", disabled=bool(missing)):
        return None
    try:
        params = params_from(cls.config_class, raw)
        clean = str(save_upload(clean_file.getvalue(), clean_file.name)) if clean_file is not None else ""
        job = submit_defense(source, cls.name, params, clean, int(seed))
    except KDCoreError as e:
        show_error(e)
        return None
    st.success(f"Queued job #{job.id} ({job.label}); a worker runs it. Progress below.", icon="✅")
    return job


def active_jobs_ui(source: Job) -> None:
    """Queued and running defend jobs of this source, with progress; refreshed every 2 s while any
    is active. When one finishes the whole page reruns, so the comparison picks it up."""
    if not defend_jobs(source, ("queued", "running")):
        return

    @st.fragment(run_every=2.0)
    def progress() -> None:
        jobs = defend_jobs(source, ("queued", "running"))
        if not jobs:
            st.rerun()
        for j in jobs:
            with st.container(border=True):
                st.markdown(f"**#{j.id} {j.label}** — {STATE_ICON.get(j.state, '')} {j.state}")
                if j.state == "running":
                    frac = j.step / j.total if j.total else 0.0
                    eta = store().eta(j)
                    st.progress(
                        min(max(frac, 0.0), 1.0),
                        text=f"{j.stage}: {j.step}/{j.total} {j.message}"
                        + (f" · ETA {fmt_duration(eta)}" if eta is not None else ""),
                    )

    st.markdown("**In progress**")
    progress()


def failed_jobs_ui(source: Job) -> None:
    failed = defend_jobs(source, ("failed", "interrupted", "cancelled"))
    if not failed:
        return
    with st.expander(f"{len(failed)} defend job(s) did not finish"):
        for j in failed[:20]:
            reason = j.error.strip().splitlines()[-1][:300] if j.error.strip() else ""
            st.markdown(f"**#{j.id} {j.label}** — {STATE_ICON.get(j.state, '')} {j.state}. {reason}")
        st.caption("Retry them from the Jobs page.")


# ---- the comparison ---------------------------------------------------------------------------


def finished_defenses(source: Job) -> list[tuple[Job, dict]]:
    """Succeeded defend jobs of this source with their report (newest first; reportless ones skipped)."""
    out = []
    for j in defend_jobs(source, ("succeeded",)):
        report = load_report(j.run_dir)
        if report is not None:
            out.append((j, report))
    return out


def finding(report: dict) -> str:
    """One line of what a defense found: the method's headline, else how many samples it flagged."""
    headline = headline_of(report)
    if headline:
        return headline
    det = detection_of(report)
    return f"{count_of(det.get('flagged', 0), det.get('total', 0))} training samples flagged" if det else ""


def compare_rows(source_report: dict | None, defenses: list[tuple[Job, dict]]) -> list[dict]:
    """One row per model: the source run's (baseline, suspect, the core method's) then one per defend job."""
    rows = []
    src = source_report or {}
    seconds, src_det = seconds_of(src), detection_of(src) or {}
    for role, ev in models_of(src).items():
        core = role not in REFERENCE_ROLES
        det = src_det if role == "finetuned" else {}
        row = {"model": ROLES[role], "job": None, "family": REFERENCE_ROLES.get(role, "core method")}
        row |= metrics_of(ev) | {k: det.get(k) for k in DETECTION}
        row |= {"wall_s": seconds.get(role), "needs_labels": False if core else None, "finding": ""}
        rows.append(row)
    for job, report in defenses:
        det = detection_of(report) or {}
        row = {"model": f"{report.get('method', '?')} (#{job.id})", "job": job.id, "family": report.get("family")}
        row |= metrics_of(models_of(report).get("repaired")) | {k: det.get(k) for k in DETECTION}
        row["wall_s"] = report.get("method_wall_s")
        row["needs_labels"] = bool(report.get("needs_labels"))
        row["finding"] = finding(report)
        rows.append(row)
    return rows


def compare_ui(rows: list[dict]) -> None:
    """The comparison table and the clean_acc-vs-asr chart."""

    def pct(label: str, h: str) -> st.column_config.NumberColumn:
        return st.column_config.NumberColumn(label, format="percent", help=h)

    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        key="defense-compare",
        placeholder=NOT_MEASURED,
        column_config={
            "model": st.column_config.TextColumn("model", pinned=True),
            "job": st.column_config.NumberColumn("job", format="#%d"),
            "clean_acc": pct("clean_acc", "Accuracy on the clean test set (higher is better)."),
            "poison_acc": pct("poison_acc", "Accuracy on triggered test images w.r.t. their true labels."),
            "asr": pct("asr", "Attack success rate: triggered images classified as the target (lower is better)."),
            "flagged": st.column_config.NumberColumn("flagged", help="Training samples flagged as poison."),
            "precision": pct("precision", "Share of the flagged samples that are poison (needs the ground truth)."),
            "recall": pct("recall", "Share of the poisons that were flagged (needs the ground truth)."),
            "wall_s": st.column_config.NumberColumn(
                "wall_s",
                format="%.1f s",
                help="The method's own run time (core method: the distillation, and the whole audit).",
            ),
            "needs_labels": st.column_config.CheckboxColumn("needs labels", help=LABELLED_BASELINE),
            "finding": st.column_config.TextColumn("finding", width="large"),
        },
    )
    st.caption(
        f"{NOT_MEASURED} = not measured: detectors and inspectors return no model to test, and precision "
        "and recall need the true poisons, which only built-in demos know."
    )
    if any(r["clean_acc"] is not None and r["asr"] is not None for r in rows):
        st.plotly_chart(defense_tradeoff_figure(rows), key="defense-tradeoff", config={"displaylogo": False})
        st.caption(
            "Each model's clean accuracy against its attack success rate: the best corner is the top left. "
            "Detectors and inspectors return no model, so they are not drawn."
        )
