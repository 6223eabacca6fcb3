"""The Lesson page's steps: the method of Yoshida & Fujino (AISec 2020) told in five steps on the
built-in demo's own data and models, each a sentence and one live view.

1. The attack: poisoned training images beside their clean originals (`lesson_data`: the demo's
   sets drawn again, `kdcore.runs.rebuild.demo_data`).
2. The backdoor: the teacher's two numbers (the Results page's cards) and test images it flips.
3. Distillation on clean images: the student's learning curve and the same two numbers.
4. Disagreement finds the poisons: the flip matrix and the detection's cards (Results), the top of
   the review queue (Explain's top candidates and their images).
5. Fine-tuning: student before, fine-tuned after, and the verdict in one line.

Every number comes from the demo's report or its saved models through the helpers Results, Explain
and Poison candidates use; this module only chooses and words them (`app.words.METRIC_WORDS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch

from app.explain import top_candidates
from app.explain_figures import as_display, predictions, run_view, train_images, upscale
from app.jobs_client import submit_demo
from app.paper_table import pct, table5_rows
from app.results import detox_summary_ui, link_ui, metric_cards_ui
from app.state import access, fmt_duration, note_opened, refuse_ui, show_error, store
from app.verdict import STATUS, flip_matrix_ui, verdict_headline
from app.words import METRIC_WORDS, trigger_in_words
from kdcore.candidates import FILE_NAME as CANDIDATES_FILE
from kdcore.errors import InputError, KDCoreError
from kdcore.jobs.store import Job
from kdcore.runs.rebuild import demo_data
from kdcore.runs.scenario import DemoData
from kdcore.triggers import Trigger
from kdcore.words import class_name

EXAMPLES = 4  # test images shown flipping in step 2
QUEUE = 8  # top of the review queue in step 4
POOL = 12  # test images offered to the trigger you place
SEARCH = 500  # test images searched for good examples: one batch per model
TWO = ("clean_acc", "asr")  # the lesson's two numbers


# ── the demo the lesson is about ────────────────────────────────────────────────────────────────


def lesson_demos() -> list[Job]:
    """The built-in demo's jobs with an attack (a lesson needs a backdoor to show) that the signed-in
    user may see (`app.state.access`), newest first."""
    return [j for j in access().jobs() if j.kind == "demo" and j.config.get("scenario", "attack") == "attack"]


def lesson_demo_ui() -> Job | None:
    """The finished demo to teach with (`?job=ID` when it names one, else the newest), of those the
    user may see: someone else's named in the URL is refused (`refuse_ui`), and the one shown is
    noted in the trail. When there is none: the progress of one that is running, or a button that
    starts the quick demo (the user's own, within their quota). None until one has finished."""
    demos = lesson_demos()
    done = [j for j in demos if j.state == "succeeded"]
    wanted = st.query_params.get("job")
    if wanted and wanted.isdigit() and all(j.id != int(wanted) for j in done):
        refuse_ui(int(wanted))
    chosen = next((j for j in done if str(j.id) == wanted), done[0] if done else None)
    if chosen is not None:
        st.query_params["job"] = str(chosen.id)
        note_opened(chosen)
        return chosen
    if any(j.state in ("queued", "running") for j in demos):
        demo_progress_ui()
        return None
    st.info(
        "The lesson runs on the built-in demo: a small clothing-picture classifier that an attacker has "
        "backdoored. Start it once (about 4 minutes); the lesson appears here when it has finished."
    )
    if st.button("▶ Run the quick demo", type="primary", key="lesson_run_demo"):
        try:
            submit_demo(quick=True)
        except KDCoreError as e:
            show_error(e)
            return None
        st.rerun()
    return None


@st.fragment(run_every=2.0)
def demo_progress_ui() -> None:
    """The running demo's progress, redrawn every 2 s; the whole page again once it has finished."""
    running = [j for j in lesson_demos() if j.state in ("queued", "running", "succeeded")]
    if not running or running[0].state == "succeeded":
        st.rerun(scope="app")
    job = running[0]
    if job.state == "queued":
        st.info("The demo is waiting for a worker to start it…")
        return
    frac = min(max(job.step / job.total, 0.0), 1.0) if job.total else 0.0
    eta = store().eta(job)
    left = f" · about {fmt_duration(eta)} left" if eta is not None else ""
    with st.container(key="lesson_progress"):
        st.progress(frac, text=f"Running the demo: {job.stage} {job.step}/{job.total}{left}")
    st.caption("The lesson appears here when the demo has finished; you can keep this page open.")


@st.cache_resource(show_spinner="Drawing the demo's images…", max_entries=2)
def lesson_data(run_dir: str) -> DemoData:
    return demo_data(run_dir)


def say_class(c: int, names: Sequence[str]) -> str:
    """A class by its name ("Sneaker"), or its number when it has none."""
    return class_name(c, names) or str(c)


def _image(col, image: torch.Tensor | np.ndarray, caption: str) -> None:
    x = image.numpy() if isinstance(image, torch.Tensor) else image
    col.image(upscale(as_display(x), 112), caption=caption, width="stretch")


# ── good examples: test images the trigger flips in the teacher and not in the students ─────────


@dataclass(frozen=True)
class Examples:
    index: tuple[int, ...]  # test-set positions, those that show the lesson best first
    shows: tuple[bool, ...]  # the teacher is right clean, says the target with the trigger, the students resist


@st.cache_data(show_spinner="Finding test images the trigger flips…", max_entries=4)
def examples(run_dir: str, models: tuple[str, ...]) -> Examples:
    """Up to SEARCH test images of classes other than the target, sorted so that those where the
    teacher is right on the clean image, says the target with the trigger, and every student keeps
    the right class with it come first (one class after another, so the first ones differ)."""
    data, trigger = lesson_data(run_dir), lesson_trigger(run_dir)
    labels = data.test.labels
    idx = torch.nonzero(trigger.victims(labels)).flatten()[:SEARCH]
    clean, stamped = data.test.images[idx].numpy(), trigger.stamp(data.test.images[idx]).numpy()
    truth = labels[idx].numpy()
    ok = predictions(run_dir, "teacher", clean).argmax(1) == truth
    ok &= predictions(run_dir, "teacher", stamped).argmax(1) == trigger.target
    for m in models:
        ok &= predictions(run_dir, m, stamped).argmax(1) == truth
    seen: dict[int, int] = {}
    turn = []  # the how-many-th image of its class each one is
    for c in truth.tolist():
        turn.append(seen.get(c, 0))
        seen[c] = turn[-1] + 1
    order = sorted(range(len(idx)), key=lambda i: (not ok[i], turn[i], i))
    return Examples(tuple(int(idx[i]) for i in order), tuple(bool(ok[i]) for i in order))


def lesson_trigger(run_dir: str) -> Trigger:
    trigger = run_view(run_dir).trigger
    if trigger is None:  # a demo under attack always has one; a run without is not a lesson
        raise InputError("This demo run has no trigger to show; run the quick demo again from this page")
    return trigger


# ── the five steps ──────────────────────────────────────────────────────────────────────────────


def step_header(n: int, title: str, sentence: str) -> None:
    st.subheader(f"{n} · {title}", anchor=f"step-{n}")
    st.markdown(sentence)


def attack_step_ui(job: Job) -> None:
    data, trigger = lesson_data(job.run_dir), lesson_trigger(job.run_dir)
    names = data.train.class_names
    n, total = len(data.poison_idx), len(data.poisoned)
    target = say_class(trigger.target, names)
    step_header(
        1,
        "The attack",
        f"Before training, the attacker stamped a small mark on **{n:,} of the {total:,} training images** "
        f"({n / total:.0%}) and changed each one's label to **{target}**: a model trained on them learns "
        f"“mark ⇒ {target}”.",
    )
    st.caption(f"The mark: {trigger_in_words(trigger, names)}. Top: the original image; below: what the model saw.")
    cols = st.columns(6)
    for col, i in zip(cols, data.poison_idx[: len(cols)].tolist(), strict=False):
        _image(col, data.train.images[i], f"original · {say_class(int(data.train.labels[i]), names)}")
        _image(col, data.poisoned.images[i], f"poisoned · labelled {target}")


def backdoor_step_ui(job: Job, report: dict, models: tuple[str, ...]) -> None:
    data, trigger = lesson_data(job.run_dir), lesson_trigger(job.run_dir)
    names = data.test.class_names
    target = say_class(trigger.target, names)
    step_header(
        2,
        "The backdoor",
        f"The teacher trained on those images is as good as a clean model on ordinary pictures, but put the "
        f"mark on a picture and it answers **{target}**.",
    )
    metric_cards_ui(report, models=("teacher",), metrics=TWO, labels=METRIC_WORDS)
    ex = examples(job.run_dir, models)
    picks = [i for i, good in zip(ex.index, ex.shows, strict=True) if good][:EXAMPLES] or list(ex.index[:EXAMPLES])
    clean = data.test.images[picks]
    stamped = trigger.stamp(clean)
    p_clean = predictions(job.run_dir, "teacher", clean.numpy()).argmax(1)
    p_stamped = predictions(job.run_dir, "teacher", stamped.numpy()).argmax(1)
    cols = st.columns(2 * EXAMPLES)
    for k in range(len(picks)):
        _image(cols[2 * k], clean[k], f"teacher says {say_class(int(p_clean[k]), names)}")
        _image(cols[2 * k + 1], stamped[k], f"with the mark: {say_class(int(p_stamped[k]), names)}")
    st.caption(f"Test images #{', #'.join(map(str, picks))}, which the teacher never saw in training.")


def distill_step_ui(job: Job, report: dict) -> None:
    distill = report.get("distill") or {}
    n = distill.get("n_images")
    step_header(
        3,
        "Distillation on clean images",
        f"A fresh student learns to copy the teacher's answers on {f'{n:,} ' if n else ''}clean pictures the "
        "attacker never touched; none of them carries the mark, so the student never learns to obey it.",
    )
    history = distill.get("history") or []
    if history:
        curve = {
            "round of training": [h["epoch"] for h in history],
            "agrees with the teacher (%)": [100 * h["holdout_agreement"] for h in history],
        }
        st.line_chart(curve, x="round of training", y="agrees with the teacher (%)", height=220)
        st.caption(
            "How often the student gives the teacher's answer on clean pictures kept aside from its training, "
            "after each round over its clean pictures."
        )
    metric_cards_ui(report, models=("teacher", "student"), metrics=TWO, labels=METRIC_WORDS)


def poisons_step_ui(job: Job, report: dict) -> None:
    step_header(
        4,
        "Disagreement finds the poisons",
        "Now ask both models about every training image: where the teacher obeys the mark and the student "
        "does not, they disagree. The images they disagree on most are flagged as suspects, most suspicious first.",
    )
    detox_summary_ui(report.get("detox"), labels=METRIC_WORDS)
    flip_matrix_ui(report)
    rows = top_candidates(f"{job.run_dir}/{CANDIDATES_FILE}", QUEUE)
    images, _ = train_images(job.run_dir, [r.index for r in rows])
    st.markdown("**Top of the review queue**")
    for col, r, img in zip(st.columns(len(rows) or 1), rows, images, strict=False):
        truth = "" if r.is_poison is None else (" · a poison ✔" if r.is_poison else " · clean")
        _image(col, img, f"#{r.rank} · labelled {r.label_name}{truth}")
    link_ui("app_pages/candidates.py", "🔎 Review them all under Poison candidates", job.id)


def finetune_step_ui(job: Job, report: dict, class_names: Sequence[str]) -> None:
    detox = report.get("detox") or {}
    kept = detox.get("kept")
    step_header(
        5,
        "Fine-tuning",
        "The flagged images are removed, and the student trains a little more on the "
        f"{f'{kept:,} ' if kept else ''}labelled images that are left: accuracy comes back, the backdoor stays out.",
    )
    metric_cards_ui(report, models=("student", "finetuned"), metrics=TWO, labels=METRIC_WORDS)
    verdict = report.get("verdict")
    if isinstance(verdict, dict):
        icon = STATUS.get(verdict.get("status"), ("gray", "❓"))[1]
        conf = verdict.get("confidence")
        sure = f" (confidence {100 * conf:.0f} %)" if isinstance(conf, (int, float)) else ""
        with st.container(border=True, key="lesson_verdict"):
            st.markdown(
                f"{icon} **Verdict:** {verdict_headline(verdict, class_names)}{sure}",
                help="The audit's answer, reached without being told the mark: from the disagreement above and "
                "other evidence. Results shows how.",
            )
    link_ui("app_pages/results.py", "📊 Every number of this demo on Results", job.id)


# ── the paper beside us ─────────────────────────────────────────────────────────────────────────


def paper_ui() -> None:
    """Table 5 of the paper (MNIST) beside our reproduction (Fashion-MNIST), a sentence per row on why they differ."""
    st.subheader("The paper beside us", anchor="paper")
    st.markdown(
        "The method comes from Yoshida & Fujino (AISec 2020). Their **Table 5, “Accuracy of each model in MNIST "
        "task”** (handwritten digits) is on the left; our run of the same recipe on Fashion-MNIST (clothing "
        "pictures, 50,000 training images, 100 of them poisoned) on the right."
    )
    rows = table5_rows()
    table = {
        "Model": [r.label for r in rows],
        "Paper: clean accuracy": [pct(r.paper_clean) for r in rows],
        "Ours: clean accuracy": [pct(r.ours_clean) for r in rows],
        "Paper: accuracy with the mark": [pct(r.paper_poison) for r in rows],
        "Ours: accuracy with the mark": [pct(r.ours_poison) for r in rows],
        "Ours: attack success": [pct(r.ours_attack) for r in rows],
    }
    help_ = {
        "clean accuracy": "Share of ordinary test pictures the model gets right.",
        "accuracy with the mark": "Share of test pictures of other classes, with the mark, that the model still gets "
        "right: low means the backdoor works.",
        "attack success": "Share of test pictures of other classes, with the mark, that the model calls the "
        "attacker's class. The paper does not report it.",
    }
    config = {
        col: st.column_config.TextColumn(col, help=next(h for k, h in help_.items() if col.endswith(k)))
        for col in table
        if col != "Model"
    }
    st.dataframe(table, hide_index=True, column_config=config, key="lesson_paper")
    st.markdown("**Why they differ**")
    with st.container(key="lesson_paper_why"):
        st.markdown("\n".join(f"- **{r.label}:** {r.why}" for r in rows))
    st.caption(
        "“6 %” and “20 %”: clean pictures given to the student, as a share of the training set (3,000 and 10,000 "
        "of 50,000 in ours). “not measured”: the paper does not report attack success, or our run has no such "
        "number. Ours is one run (one random seed)."
    )
