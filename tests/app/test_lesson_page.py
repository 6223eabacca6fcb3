"""Lesson page: AppTests on the built-in demo at its smallest (five steps, the trigger you place, the paper
beside us, in a student's words), the offer to run the demo when none has finished, and the page's pure parts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from app.lesson_trigger import Placement, default_placement, place_mark
from app.paper_table import NOT_MEASURED, PAPER, pct, table5_rows
from kdcore.jobs.store import JobStore
from kdcore.triggers import BadNets
from tests.app.conftest import open_page
from tests.conftest import needs_fashion_mnist

# What a student should never read on the page: report fields, command-line flags, seed-file names, paths
JARGON = re.compile(r"clean_acc|poison_acc|\basr\b|false_positives|holdout_agreement|--[a-z]|seed 0\d\d|\.json|/tmp/")


def _text(at) -> str:
    parts = [e.value for kind in ("markdown", "caption", "subheader", "title", "info", "warning") for e in at.get(kind)]
    parts += [m.label for m in at.metric] + [m.help or "" for m in at.metric]
    parts += [s.label for s in at.slider] + [r.label for r in at.radio] + [b.label for b in at.selectbox]
    return "\n".join(str(p) for p in parts)


def _says(at) -> dict[str, str]:
    """model label → the class it names in the trigger section ("**Distilled student** says **Bag** (80%)")."""
    out = {}
    for md in at.markdown:
        m = re.match(r"\*\*(.+?)\*\* says \*\*(.+?)\*\*", md.value)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _befores(at) -> list[str]:
    shown = [c.value for c in at.caption if c.value.startswith("without the mark: ")]
    return [re.match(r"without the mark: (.+) \(", c).group(1) for c in shown]


@needs_fashion_mnist
def test_lesson_walks_five_steps_in_plain_words(lesson_env):
    at = open_page("lesson", job=1, timeout=300)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    steps = [h.value for h in at.subheader if re.match(r"\d · ", h.value)]
    assert steps == [
        "1 · The attack",
        "2 · The backdoor",
        "3 · Distillation on clean images",
        "4 · Disagreement finds the poisons",
        "5 · Fine-tuning",
    ]
    text = _text(at)
    assert not JARGON.search(text), JARGON.search(text)
    # step 1 counts the demo's own poisons and names the target class
    assert "**30 of the 600 training images**" in text and "**Sneaker**" in text
    # every metric card explains itself on hover
    assert at.metric and all(m.help for m in at.metric)
    report = json.loads((Path(JobStore(lesson_env).get(1).run_dir) / "report.json").read_text())
    teacher = f"{100 * report['teacher']['asr']:.1f} %"
    assert next(m.value for m in at.metric if m.label == "Attack success") == teacher
    assert any("Verdict:" in md.value for md in at.markdown)  # step 5's one-line verdict
    assert at.get("vega_lite_chart")  # the student's learning curve
    links = {link.proto.label: link.proto.page for link in at.get("page_link")}
    assert any("Poison candidates" in label for label in links), links  # step 4 leads to the review queue
    assert len(_says(at)) == 3  # teacher, distilled and fine-tuned student side by side
    assert any("Table 5" in md.value for md in at.markdown)
    paper = at.dataframe[0].value  # the paper's numbers beside ours, in words with hover help
    assert paper["Paper: accuracy with the mark"][1] == "4.9 %" and paper["Ours: attack success"][0] != NOT_MEASURED


@needs_fashion_mnist
def test_the_trigger_controls_redraw_the_three_answers(lesson_env):
    at = open_page("lesson", job=1, timeout=300)
    assert [s.value for s in at.slider] == [3, 24, 24, 100]  # the attacker's own square, where it stamped it
    at.slider(key="lesson_intensity").set_value(0).run(timeout=300)
    assert not at.exception
    # no mark at all: each model answers as it does without it
    assert list(_says(at).values()) == _befores(at)
    at.slider(key="lesson_size").set_value(10).run(timeout=300)  # a bigger square must still fit: x, y follow
    assert [s.value for s in at.slider][:3] == [10, 18, 18]
    assert not at.exception and not at.error


def test_lesson_offers_the_demo_and_shows_it_queued(empty_home):
    at = open_page("lesson")
    assert not at.exception
    at.button(key="lesson_run_demo").click().run(timeout=60)
    jobs = JobStore(empty_home).list()
    assert len(jobs) == 1 and jobs[0].kind == "demo" and jobs[0].config["quick"] is True
    assert any("waiting for a worker" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "lesson_run_demo"]  # one demo, not a second


def test_the_default_placement_is_the_attackers_trigger():
    """The square the Lesson places to begin with stamps exactly what the attacker's trigger stamps."""
    images = torch.randint(0, 200, (5, 1, 28, 28), dtype=torch.uint8)
    for trigger in (BadNets(target=7, size=3), BadNets(target=1, size=4, location="top-left", margin=2)):
        where = default_placement(trigger, 28, 28)
        white = torch.full((1, where.size, where.size), 255, dtype=torch.uint8)
        assert torch.equal(place_mark(images, white, where), trigger.stamp(images))
    faded = place_mark(images, torch.full((1, 2, 2), 255, dtype=torch.uint8), Placement(0, 0, 2, 0.5))
    want = ((images[:, :, :2, :2].float() + 255) / 2).round().to(torch.uint8)
    assert torch.equal(faded[:, :, :2, :2], want) and torch.equal(faded[:, :, 2:], images[:, :, 2:])


def test_paper_table_beside_ours_and_not_measured(tmp_path):
    rows = table5_rows()
    assert len(rows) == len(PAPER) == 10 and all(r.why for r in rows)
    back = next(r for r in rows if r.key == ("-", "backdoor", 0))
    assert (back.paper_clean, back.paper_poison) == (0.989, 0.049)  # seed 000's Table 5, as printed
    ours = json.loads((Path(__file__).resolve().parents[2] / "benchmarks/results/table5.json").read_text())["rows"]
    leak = next(r for r in ours if (r["scenario"], r["budget"], r["model"]) == ("attack", 10_000, "student"))
    assert next(r for r in rows if r.key == ("attack", "student", 20)).ours_attack == leak["asr"]
    assert all(r.ours_attack is not None for r in rows)
    missing = table5_rows(tmp_path / "none.json")
    assert all(r.ours_clean is None for r in missing)
    assert pct(None) == NOT_MEASURED and pct(0.049) == "4.9 %"
