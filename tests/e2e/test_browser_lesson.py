"""The Lesson in a real browser: offered on a data folder without a demo, it shows a running demo's progress,
then walks its five steps; the trigger's controls flip the teacher to the attacker's class while the distilled
and fine-tuned students keep the picture's own class. The demo is not the quick one (another browser test
runs that): `LESSON_DEMO`, a smaller real one queued straight into the job store as the offer's button would
(the same kind and label), which the server's own worker runs. Its own server: it needs a fresh data folder
(no demo yet) to show the offer."""

from __future__ import annotations

import pytest

from kdcore.config import to_dict
from kdcore.jobs.store import JobStore
from kdcore.runs import DemoConfig
from tests.e2e.conftest import shot, wait_job

# The smallest built-in demo measured to teach the lesson: a teacher that obeys the mark on test images whose
# distilled and fine-tuned students keep their class (the Lesson's `examples`). Not blind: no verdict to wait for.
# Measured (seed 0, CPU, 2 shared cores; teacher / student / fine-tuned attack success, such test images of 271):
#   600 images, 30 poisons, 1 epoch each (tests.conftest.TINY_DEMO)    21 s   2 % / 18 % / 27 %     0: no backdoor
#   1,000 images, 200 poisons, teacher 2 epochs, distill 3             33 s  21 % / 15 % / 44 %     0: ft relearns it
#   1,000 images, 50 poisons, teacher 3 epochs, distill 3             131 s   7 % /  4 % /  6 %     4
#   600 images, 120 poisons, teacher 3 epochs, distill 3 (this one)    44 s  30 % /  7 % / 28 %    11
#   2,000 images, 100 poisons, teacher 3 epochs, distill 4            254 s  59 % /  2 % /  2 %   171
LESSON_DEMO = {
    "n_train": 600,
    "n_clean": 300,
    "n_poison": 120,
    "n_test": 300,
    "teacher": {"epochs": 3},
    "kd": {"distill": {"epochs": 3}, "finetune": {"epochs": 1}},
}

STEPS = (
    "1 · The attack",
    "2 · The backdoor",
    "3 · Distillation on clean images",
    "4 · Disagreement finds the poisons",
    "5 · Fine-tuning",
)
# the script has finished its rerun and nothing on the page is stale
SETTLED = """() => document.querySelector('[data-testid="stApp"]')
  .getAttribute('data-test-script-state') === 'notRunning' && !document.querySelector('[data-stale="true"]')"""
TARGET = "Sneaker"  # the quick demo's trigger relabels to class 7 (DemoConfig's BadNets(target=7))


def _says(page, model: str) -> str:
    return page.locator(f".st-key-lesson_pred_{model}").inner_text()


def _move(page, key: str, button: str) -> None:
    """Drag the slider `key` to its end with the keyboard (Home: its start, End: its end)."""
    thumb = page.locator(f".st-key-{key} input[type=range]")  # a react-aria slider: its hidden range input
    thumb.focus()
    page.keyboard.press(button)


@pytest.mark.timeout(1200)  # LESSON_DEMO's job: under a minute on 2 shared cores
def test_lesson_shows_a_demo_walks_the_steps_and_flips_only_the_teacher(server, page):
    url, data = server["url"], server["data"]
    page.goto(f"{url}/lesson")
    page.get_by_role("button", name="Run the quick demo").wait_for()  # offered, not clicked: the quick demo is long
    cfg = to_dict(DemoConfig.preset(quick=True, **LESSON_DEMO, device="cpu", cache_dir=str(data / "cache")))
    job = JobStore(data).submit("demo", cfg, label="quick demo")
    page.goto(f"{url}/lesson")
    page.locator(".st-key-lesson_progress").wait_for(timeout=180_000)  # its progress while it runs
    wait_job(data, job.id, timeout=900)
    for step in STEPS:  # the page redraws itself once the demo has finished
        page.get_by_role("heading", name=step).wait_for(timeout=180_000)
    page.get_by_role("heading", name="The paper beside us").wait_for(timeout=120_000)
    page.get_by_text("Table 5, “Accuracy of each model in MNIST task”").wait_for()

    teacher, students = "teacher", ("student", "finetuned")
    page.locator(".st-key-lesson_pred_teacher").wait_for(timeout=120_000)
    page.locator(".st-key-lesson_trigger_preds").scroll_into_view_if_needed()
    # the attacker's own square, where it stamped it: the teacher obeys, the students do not
    assert f"says {TARGET}" in _says(page, teacher), _says(page, teacher)
    assert all(f"says {TARGET}" not in _says(page, m) for m in students)

    _move(page, "lesson_intensity", "Home")  # fade the mark out: the teacher sees the clothing again
    page.wait_for_function(
        f"!document.querySelector('.st-key-lesson_pred_teacher').innerText.includes('says {TARGET}')", timeout=60_000
    )
    before = {m: _says(page, m) for m in (teacher, *students)}
    _move(page, "lesson_intensity", "End")  # and back in: the teacher flips to the target, the students do not
    page.wait_for_function(
        f"document.querySelector('.st-key-lesson_pred_teacher').innerText.includes('says {TARGET}')", timeout=60_000
    )
    page.wait_for_function(SETTLED, timeout=60_000)  # the students redraw after the teacher
    for m in students:
        assert f"says {TARGET}" not in _says(page, m), _says(page, m)
        assert _says(page, m).split(" (")[0] == before[m].split(" (")[0]  # the same class with and without the mark
    shot(page, "Lesson")
