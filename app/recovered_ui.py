"""Neural Cleanse's recovered trigger used as a trigger in the dashboard (issue 10, item 2).

- Defenses: "Use the recovered trigger" estimates the asr of the suspect, of the core method's
  models and of every repaired model of the audit under the recovered trigger. It is computed in
  the page, not queued as a job: it is one forward pass per model over the audit's labelled test
  set (seconds on a CPU, no training), and `kdcore.evaluate.evaluate_model` measures it with the
  same definition of asr as every other trigger. The result is cached per (audit, trigger, models).
- Explain: the input rows can carry the recovered trigger instead of the run's own (Cheng et al.'s
  fig. 2 "synthetic trigger" inputs), for Grad-CAM and the activation norms.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import streamlit as st
import torch

from app.defenses import defend_jobs
from app.explain_figures import _compute_lock, run_context
from app.state import access, show_error
from app.words import trigger_in_words
from kdcore.errors import KDCoreError
from kdcore.evaluate import evaluate_model
from kdcore.jobs.store import Job
from kdcore.models.loading import load_model
from kdcore.report import ROLES
from kdcore.run_context import RunContext
from kdcore.triggers import Recovered, Trigger
from kdcore.triggers.recovered import FILE
from kdcore.words import class_ref


def recovered_sources(run_dir: str) -> list[tuple[str, str]]:
    """(label, run dir) of the recovered triggers of an audit run: its own evidence (an audit that
    ran Neural Cleanse) and its finished neural-cleanse defend jobs, newest first."""
    out = [("this audit's Neural Cleanse", run_dir)] if (Path(run_dir) / FILE).is_file() else []
    for j in access().jobs(("succeeded",)):
        nc = j.kind == "defend" and j.config.get("method") == "neural-cleanse"
        if nc and j.config.get("source_run") == str(run_dir) and j.run_dir and (Path(j.run_dir) / FILE).is_file():
            out.append((f"Neural Cleanse #{j.id}", j.run_dir))
    return out


@st.cache_resource(max_entries=16, show_spinner=False)
def recovered_trigger(run_dir: str, target: int = -1) -> Recovered:
    """The recovered trigger of a run (`target` -1: its flagged or most anomalous class)."""
    return Recovered(run=run_dir, target=target)


@st.cache_data(max_entries=8, show_spinner="Measuring asr under the recovered trigger…")
def recovered_asr(source_run: str, trigger_json: str, repaired: tuple[tuple[str, str], ...]) -> list[dict]:
    """One row per model (suspect, the core method's models, `repaired` (label, run dir)): clean_acc,
    poison_acc and asr on the audit's test set with the recovered trigger."""
    ctx = run_context(source_run)
    if ctx.test is None or ctx.test.labels is None:
        return []
    trigger = Trigger.from_dict(json.loads(trigger_json))
    models = [(ROLES.get(n, n), *ctx.model(n)) for n in ctx.available_models()]
    models += [(label, *load_model(Path(d) / "models" / "repaired.safetensors", None, "cpu")) for label, d in repaired]
    rows = []
    for label, model, spec in models:
        with _compute_lock():  # the run's models are shared with Explain's Grad-CAM
            ev = evaluate_model(model.eval(), spec, ctx.test, torch.device("cpu"), trigger)
        rows.append({"model": label, "asr": ev.asr, "poison_acc": ev.poison_acc, "clean_acc": ev.clean_acc})
    return rows


def use_recovered_ui(source: Job, nc_job: Job) -> None:
    """The button under a Neural Cleanse result: asr of every model of the audit under its recovered trigger."""
    if not (Path(nc_job.run_dir) / FILE).is_file():
        st.caption(
            "This Neural Cleanse run saved no raw recovered trigger (it predates evidence/recovered.safetensors)."
        )
        return
    key = f"use-recovered-{nc_job.id}"
    if st.button("Use the recovered trigger", key=key, help="asr of every model of this audit under it"):
        st.session_state[key + "-on"] = True
    if not st.session_state.get(key + "-on"):
        return
    try:
        trigger = recovered_trigger(nc_job.run_dir)
        repaired = tuple(
            (f"{j.config.get('method')} (#{j.id})", j.run_dir)
            for j in defend_jobs(source, ("succeeded",))
            if (Path(j.run_dir) / "models" / "repaired.safetensors").is_file()
        )
        rows = recovered_asr(source.run_dir, json.dumps(trigger.to_dict()), repaired)
    except KDCoreError as e:
        show_error(e)
        return
    if not rows:
        st.info("The audit has no labelled test set, so asr under the recovered trigger cannot be measured.")
        return
    st.markdown(f"**asr under the recovered trigger of class {trigger.target}** (estimated)")
    st.dataframe(
        rows,
        hide_index=True,
        key=f"recovered-asr-{nc_job.id}",
        column_config={
            c: st.column_config.NumberColumn(c, format="percent") for c in ("asr", "poison_acc", "clean_acc")
        },
    )
    st.caption(
        "The recovered trigger stamped on every test image not of that class. A backdoored suspect flips far "
        "more than a repaired model; the recovered trigger only approximates the real one, so this is an estimate."
    )


def explain_trigger_ui(ctx: RunContext) -> RunContext:
    """Which trigger the Explain inputs carry: the run's own, or a recovered one (`ctx` with it)."""
    sources = recovered_sources(str(ctx.run_dir))
    if not sources:
        return ctx
    names = ctx.spec.names
    own = [f"the audit's trigger: {trigger_in_words(ctx.trigger, names)}"] if ctx.trigger is not None else ["none"]
    options = own + [f"the trigger {label} recovered" for label, _ in sources]
    pick = st.selectbox("Trigger on the inputs", options, key="explain_trigger")
    if pick in own:
        return ctx
    try:
        trigger = recovered_trigger(sources[options.index(pick) - 1][1])
    except KDCoreError as e:
        show_error(e)
        return ctx
    st.caption(
        f"Inputs with the recovered trigger of class {class_ref(trigger.target, names)}: the small change Neural "
        "Cleanse found that turns images of other classes into that class, an estimate of the real trigger."
    )
    return dataclasses.replace(ctx, trigger=trigger)
