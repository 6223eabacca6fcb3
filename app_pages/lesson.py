"""Lesson: the method step by step on the built-in demo, a trigger you place yourself, and the paper
beside our numbers (Yoshida & Fujino, AISec 2020). For a class: plain words, every number explained
where it appears."""

import streamlit as st

from app import lesson
from app.charts import class_names_of
from app.explain_figures import model_names
from app.lesson_trigger import trigger_playground_ui
from app.results import load_report
from app.state import show_error
from kdcore.errors import KDCoreError

st.title("🎓 Lesson: how a backdoor is planted and removed")
st.caption(
    "An attacker can teach an image classifier a secret: a small mark that makes it give the attacker's "
    "answer. Here is how such a backdoor is planted, why a student model copied on clean pictures does not "
    "learn it, and how the disagreement between the two finds the poisoned pictures. Everything below is "
    "computed live from the built-in demo."
)

job = lesson.lesson_demo_ui()
if job is None:
    st.stop()

try:
    report = load_report(job.run_dir)
    if report is None:
        st.warning(f"Demo #{job.id} finished without its results; run the quick demo again.")
        st.stop()
    students = tuple(m for m in model_names(job.run_dir) if m != "teacher")
    names = class_names_of(report)
    lesson.attack_step_ui(job)
    lesson.backdoor_step_ui(job, report, students)
    lesson.distill_step_ui(job, report)
    lesson.poisons_step_ui(job, report)
    lesson.finetune_step_ui(job, report, names)

    st.subheader("Now you: place the mark yourself", anchor="try")
    st.markdown(
        "Pick a picture, then move, resize and fade the mark. The teacher jumps to the attacker's answer when the "
        "mark sits where the attacker put it; the students keep their answer."
    )
    trigger_playground_ui(
        job.run_dir, lesson.examples(job.run_dir, students), ("teacher", *students), lesson.lesson_trigger(job.run_dir)
    )
    lesson.paper_ui()
except KDCoreError as e:
    show_error(e)
