"""The verdict card and the flip matrix on Results (AppTest on hand-written reports in finished-run
folders), and their pure helpers (app.verdict, app.charts.confusion_figure's flip-matrix options)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.report_html import audit_report_html
from app.verdict import belief_text, flip_figure, verdict_headline
from kdcore.jobs.store import JobStore

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def verdict(status: str, targets=(), confidence=0.87) -> dict:
    return {
        "status": status,
        "target_classes": list(targets),
        "target_names": [NAMES[t] for t in targets],
        "confidence": confidence,
        "rule": "backdoor when ≥ 2 label-free methods name the same class",
        "evidence": [
            {
                "method": "kd-disagreement",
                "finding": "64 % of the flagged samples' teacher predictions are seven",
                "supports": "backdoor",
                "classes": [7],
                "values": {"concentration": 0.64},
            },
            {
                "method": "neural-cleanse",
                "finding": "anomaly index 3.1 for seven",
                "supports": status,
                "classes": [7],
                "values": {"anomaly_index": 3.1},
            },
            {
                "method": "recovered-trigger",
                "finding": "flips 90 % on the teacher, 4 % on the student",
                "supports": "inconclusive",
                "classes": [7],
                "values": {},
            },
            {
                "method": "activation-clustering",
                "finding": "no class split",
                "supports": "no_evidence",
                "classes": [],
                "values": {},
            },
        ],
    }


def flip_matrix() -> dict:
    counts = [[0] * 10 for _ in range(10)]
    counts[7][1], counts[7][3], counts[2][5] = 40, 25, 3
    return {"classes": NAMES, "counts": counts}


def open_results(job: int) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app_pages" / "results.py"), default_timeout=60)
    at.query_params["job"] = str(job)
    return at.run(timeout=60)


def texts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


@pytest.mark.parametrize(
    ("status", "targets", "want"),
    [
        ("backdoor", [7], ":red[Backdoor found → target class seven (7)]"),
        ("no_evidence", [], ":green[No evidence of a backdoor]"),
        ("inconclusive", [], ":orange[Inconclusive]"),
    ],
)
def test_verdict_card_is_first_and_links_each_evidence(fake_runs, status, targets, want):
    at = open_results(fake_runs({"verdict": verdict(status, targets), "flip_matrix": flip_matrix()}))
    assert not at.exception, at.exception
    md = texts(at)
    assert want in md[0], md[:3]  # the first text on the page is the verdict
    assert any("confidence **87 %**" in c.value and "rule: backdoor when" in c.value for c in at.caption)
    for method in ("kd-disagreement", "neural-cleanse", "recovered-trigger", "activation-clustering"):
        assert f"**{method}**" in md
    links = " ".join(md)
    for page in ("candidates?job=", "defenses?job=", "explain?job=", "#flip-matrix"):
        assert page in links, page
    assert any("64 % of the flagged" in m for m in md)
    assert {"🔴 backdoor", "⚪ inconclusive", "🟢 no backdoor"} <= {c.value for c in at.caption}


def test_flip_matrix_heatmap_is_drawn_with_counts(fake_runs):
    at = open_results(fake_runs({"verdict": verdict("backdoor", [7]), "flip_matrix": flip_matrix()}))
    assert not at.exception, at.exception
    assert any(h.value == "Where the flagged samples flip" for h in at.subheader)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    flip = [c for c in charts if c["layout"]["yaxis"]["title"]["text"] == "teacher predicts"]
    assert len(flip) == 1
    counts = flip[0]["data"][0]["customdata"]
    if isinstance(counts, dict):  # plotly ≥ 6 sends numpy arrays as base64
        counts = np.frombuffer(base64.b64decode(counts["bdata"]), counts["dtype"]).reshape(10, 10)
    assert counts[7][1] == 40 and counts[2][5] == 3
    assert not any("believe" in c.value for c in at.caption)  # a report without the student's belief


def test_the_students_belief_is_shown_under_the_flip_matrix_least_believed_first(fake_runs):
    v = verdict("backdoor", [7])
    v["evidence"][0]["values"] = {
        "classes": [{"class": 7, "flagged": 65, "student_p": 0.031}, {"class": 2, "flagged": 3, "student_p": 0.32}]
        + [{"class": c, "flagged": 0} for c in (0, 1, 3, 4, 5, 6, 8, 9)]
    }
    at = open_results(fake_runs({"verdict": v, "flip_matrix": flip_matrix()}))
    assert not at.exception, at.exception
    line = next(c.value for c in at.caption if "believe the teacher" in c.value)
    assert line.endswith("seven (7) 0.03 (65) · two (2) 0.32 (3)"), line
    assert belief_text({"verdict": verdict("backdoor", [7])}) == ""


def test_old_report_without_verdict_looks_as_before(fake_runs):
    at = open_results(fake_runs({"verdict": None, "flip_matrix": None}))
    assert not at.exception, at.exception
    md = texts(at)
    assert not any(s in m for m in md for s in ("Backdoor found", "No evidence", "Inconclusive", "flip-matrix"))
    assert not any(h.value == "Where the flagged samples flip" for h in at.subheader)
    assert [m.label for m in at.metric].count("clean_acc") == 3


def test_headline_words_and_names():
    assert verdict_headline({"status": "backdoor", "target_classes": [7]}, NAMES) == (
        "Backdoor found → target class seven (7)"
    )
    two = {"status": "backdoor", "target_classes": [1, 7], "target_names": ["Trouser", "Sneaker"]}
    assert verdict_headline(two) == "Backdoor found → target classes Trouser (1), Sneaker (7)"
    assert verdict_headline({"status": "backdoor", "target_classes": [3]}) == "Backdoor found → target class 3"
    for unnamed in (["class 1"], ["1"], ["Class_1"]):  # a model without class names: the word once
        v = {"status": "backdoor", "target_classes": [1], "target_names": unnamed}
        assert verdict_headline(v) == "Backdoor found → target class 1"
    digits = [str(i) for i in range(10)]
    assert verdict_headline({"status": "backdoor", "target_classes": [1, 7]}, digits) == (
        "Backdoor found → target classes 1, 7"
    )
    fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert verdict_headline({"status": "backdoor", "target_classes": [7]}, fashion) == (
        "Backdoor found → target class Sneaker (7)"
    )
    assert verdict_headline({"status": "no_evidence"}) == "No evidence of a backdoor"


def test_flip_figure_colours_by_share_of_all():
    fig = flip_figure(flip_matrix())
    z = fig.data[0].z
    assert abs(z[7][1] - 40 / 68) < 1e-9 and abs(z[2][5] - 3 / 68) < 1e-9  # not row-normalised (row 2 would be 1.0)
    assert fig.layout.yaxis.title.text == "teacher predicts" and fig.layout.xaxis.title.text == "student predicts"
    with pytest.raises(ValueError, match="square"):
        flip_figure({"classes": NAMES, "counts": [[1, 2]]})


def test_html_report_carries_the_verdict_and_flip_matrix():
    job = SimpleNamespace(id=3, kind="audit", label="x", finished_at=None, run_dir="/x")
    v = verdict("backdoor", [7]) | {"rule": "<b>rule</b>"}
    html = audit_report_html(job, {"kind": "audit", "verdict": v, "flip_matrix": flip_matrix()})
    assert "Backdoor found → target class seven (7)" in html and "&lt;b&gt;rule&lt;/b&gt;" in html
    assert "64 % of the flagged" in html and "Flip matrix" in html and "teacher predicts" in html
    old = audit_report_html(job, {"kind": "audit"})
    assert "Verdict" not in old and "Flip matrix" not in old


OLD_PATCH = (  # data.trigger as reports stored it before kdcore said triggers in words
    "patch(target=1, source=None, image=/srv/kdaudit/uploads/112a357e20eb19cb/trigger_pattern.png, mask=, "
    "location=bottom-right, margin=1, x=None, y=None, alpha=1.0)"
)
OLD_NOTE = "No trigger given: poison_acc and asr were not measured (give --trigger)."


def test_an_old_report_of_an_unnamed_model_reads_in_words(fake_runs):
    # Issue 22: a repr with the upload's server path in the header, a CLI flag in a note, "target class
    # class 1" and a class key "0 0 · 1 1 · …", on a stored report of a model whose classes have no names.
    base = json.loads((Path(JobStore(os.environ["KDAUDIT_HOME"]).get(1).run_dir) / "report.json").read_text())
    spec = base["model"]["spec"] | {"class_names": [f"class {i}" for i in range(10)]}
    unnamed = verdict("backdoor", [1]) | {"target_names": ["class 1"]}
    report = {
        "verdict": unnamed,
        "model": base["model"] | {"spec": spec},
        "config": base["config"] | {"trigger": None},
        "data": base["data"] | {"trigger": OLD_PATCH},
        "notes": [OLD_NOTE],
    }
    at = open_results(fake_runs(report))
    assert not at.exception, at.exception
    assert ":red[Backdoor found → target class 1]" in texts(at)[0]
    captions = [c.value for c in at.caption]
    header = next(c for c in captions if "trigger:" in c)
    assert "trigger: patch image trigger_pattern.png, at the bottom-right 1 px from the edges, opacity 100 %" in header
    assert "→ target class 1" in header
    shown = " ".join(captions + [i.value for i in at.info] + texts(at))
    assert "/srv" not in shown and "uploads" not in shown and "image=" not in shown and "--" not in shown
    assert any(i.value.startswith("No trigger given: poison_acc and asr were not measured.") for i in at.info)
    assert "class class" not in shown and "Classes:" not in shown  # unnamed: no key to read
    html = audit_report_html(SimpleNamespace(id=9, kind="audit", label="", run_dir=""), base | report)
    assert "/srv" not in html and "trigger_pattern.png" in html and "(give --trigger)" not in html


def test_a_fashion_report_names_its_classes_once(fake_runs):
    fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    base = json.loads((Path(JobStore(os.environ["KDAUDIT_HOME"]).get(1).run_dir) / "report.json").read_text())
    report = {
        "verdict": verdict("backdoor", [7]) | {"target_names": ["Sneaker"]},
        "model": base["model"] | {"spec": base["model"]["spec"] | {"class_names": fashion}},
    }
    at = open_results(fake_runs(report))
    assert not at.exception, at.exception
    assert ":red[Backdoor found → target class Sneaker (7)]" in texts(at)[0]
    header = next(c.value for c in at.caption if "trigger:" in c.value)
    assert header.endswith(f"→ target class {fashion[base['config']['trigger']['target']]} "
                           f"({base['config']['trigger']['target']})")  # fmt: skip
    assert any("Classes: 0 T-shirt/top · 1 Trouser ·" in c.value for c in at.caption)
