"""Results page (AppTest against real finished jobs) and its pure helpers: app.charts, app.report_html."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.charts import (
    BLUES,
    class_key,
    class_names_of,
    confusion_figure,
    confusion_table_html,
    metric_bars,
    present_models,
    sweep_accuracy_figure,
    sweep_detox_figure,
)
from app.report_html import audit_report_html, markdown_tables_to_html
from kdcore.jobs.store import JobStore
from kdcore.jobs.worker import run_job
from kdcore.words import class_name

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "app_pages" / "results.py")


def open_results(job: str | int) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["job"] = str(job)
    return at.run(timeout=60)


def plotly_charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def confusion_tables(at: AppTest) -> list[str]:
    """The HTML of every confusion table on the page (`confusion_table_html`)."""
    return [h.proto.body for h in at.get("html") if 'class="kd-cm"' in h.proto.body]


def download_labels(at: AppTest) -> list[str]:
    return [el.proto.label for el in at.get("download_button")]


# ---- the page ---------------------------------------------------------------------------------


def test_audit_results_show_metrics_confusions_and_downloads(kdaudit_home):
    at = open_results(1)
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric]
    assert labels.count("clean_acc") == 3  # teacher, student, fine-tuned (no baseline in a user audit)
    assert {"poison_acc", "asr", "flagged", "precision", "recall", "false_positives"} <= set(labels)
    report = json.loads((Path(JobStore(kdaudit_home).get(1).run_dir) / "report.json").read_text())
    shown = [m.value for m in at.metric if m.label == "clean_acc"]
    assert shown[0] == f"{100 * report['teacher']['clean_acc']:.1f} %"
    deltas = [m.proto.delta for m in at.metric if m.label == "asr"]
    assert deltas[0] == "" and deltas[1].endswith("pts vs teacher")
    tables = confusion_tables(at)
    assert len(tables) == 6  # 3 models × clean / poison test set
    counts = report["teacher"]["confusion_clean"]
    first = class_name(0, class_names_of(report)) or "class 0"  # the digits' classes are unnamed: "class 0"
    assert f"→ predicted {first}: {counts[0][0]:,} images" in tables[0]  # the teacher's
    names = download_labels(at)
    for want in ("report.json", "candidates.csv", "fine-tuned model (.zip)", "HTML report"):
        assert any(want in n for n in names), names
    assert not at.warning


def test_sweep_results_show_table_and_curves(kdaudit_home):
    at = open_results(2)
    assert not at.exception, at.exception
    assert any("| clean_acc |" in m.value for m in at.markdown)
    assert len(plotly_charts(at)) >= 2
    names = download_labels(at)
    assert any("sweep.csv" in n for n in names) and any("HTML report" in n for n in names)


def test_unknown_job_warns_instead_of_crashing(kdaudit_home):
    at = open_results(999)
    assert not at.exception, at.exception
    assert any("999" in w.value for w in at.warning)


def test_refine_results_show_review_and_source_models(kdaudit_home):
    store = JobStore(kdaudit_home)
    source = store.get(1)
    flagged = [
        int(line.split(",")[0])
        for line in (Path(source.run_dir) / "candidates.csv").read_text().splitlines()[1:]
        if line.split(",")[0].isdigit()
    ][:2]
    verdicts = [[flagged[0], "clean"], [flagged[1], "unsure"]] if len(flagged) > 1 else []
    job = store.submit(
        "refine",
        {"source_run": source.run_dir, "verdicts": verdicts, "finetune": {"epochs": 1}, "device": "cpu"},
        label="<b>review</b>",
        parent_id=1,
    )
    claimed = store.claim("cpu", os.getpid(), job.id)
    assert run_job(store, claimed, "cpu") == "succeeded", store.get(job.id).error
    at = open_results(job.id)
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric]
    assert {"verdicts: poison", "verdicts: clean", "cleared", "added", "removed"} <= set(labels)
    assert labels.count("clean_acc") == 3  # teacher and student borrowed from the source audit
    assert any("Source audit #1" in m.value for m in at.markdown)
    assert len(confusion_tables(at)) >= 6


def test_results_inside_the_app_links_to_candidates(kdaudit_home):
    from tests.app.conftest import open_page

    at = open_page("results", job=1)
    assert not at.exception, at.exception
    links = {link.proto.label: link.proto for link in at.get("page_link")}
    review = links.get("🔎 Review the poison candidates")
    assert review is not None, sorted(links)
    assert review.page == "candidates" and review.query_string == "job=1"  # that page, for this job
    assert links["🔥 Explain: Grad-CAM and activation norms"].query_string == "job=1"
    assert len(confusion_tables(at)) >= 6


# ---- charts -------------------------------------------------------------------------------------


def test_confusion_table_shows_counts_coloured_by_row_rate():
    m = [[5, 1, 0], [0, 0, 0], [2, 2, 4]]
    table = confusion_table_html(m, ["a", "<b>", "c"], "Teacher")
    cells = re.findall(
        r'<td style="background:rgb\((\d+),(\d+),(\d+)\);color:([^"]+)" title="([^"]*)">([^<]*)</td>', table
    )
    assert [int(c[5]) for c in cells] == [v for row in m for v in row]  # every count, row by row
    assert tuple(int(v) for v in cells[0][:3]) == tuple(BLUES[round(5 / 6 * 255)])  # coloured by the row's share
    assert tuple(int(v) for v in cells[3][:3]) == tuple(BLUES[0])  # an empty row: the lightest colour
    assert cells[0][4] == "true a → predicted a: 5 images (83.3% of the row)"
    assert "&lt;b&gt;" in table and "<b>" not in table  # names are shown as typed, never as markup
    assert ">Teacher<" in table
    with pytest.raises(ValueError):
        confusion_table_html([[1, 2]], ["a", "b"])
    assert class_key(["a", "b", "c"], 3) == "0 a · 1 b · 2 c" and class_key([], 3) == ""


@pytest.mark.parametrize("names", [[], ["0", "1", "2"], ["class 0", "class 1", "class 2"]])
def test_unnamed_classes_read_as_class_numbers_once(names):
    # Issue 22: the key read "0 0 · 1 1 · …" and the tooltips "true 0 → predicted 1" for unnamed classes.
    table = confusion_table_html([[5, 1, 0], [0, 0, 0], [2, 2, 4]], names)
    assert 'title="predicted class 2"' in table and "true class 0 → predicted class 1: 1 images" in table
    assert "class class" not in table
    assert class_key(names, 3) == ""  # the headers' numbers are all there is: no key to read
    assert class_key(["T-shirt/top", "1", "class 2"], 3) == "0 T-shirt/top"  # only the named ones


def test_confusion_figure_shows_counts_and_row_rates():
    m = [[5, 1, 0], [0, 0, 0], [2, 2, 4]]
    fig = confusion_figure(m, ["a", "<b>", "c"], "Teacher")
    (hm,) = fig.data
    assert [list(r) for r in hm.text] == m and [list(r) for r in hm.customdata] == m
    assert list(hm.z[0]) == pytest.approx([5 / 6, 1 / 6, 0]) and list(hm.z[1]) == [0, 0, 0]
    assert list(hm.x) == ["a", "&lt;b&gt;", "c"] == list(hm.y)
    with pytest.raises(ValueError):
        confusion_figure([[1, 2]], ["a", "b"])
    # duplicate or missing names still give one row per class
    assert len(set(confusion_figure(m, ["x", "x", "y"]).data[0].y)) == 3
    assert list(confusion_figure(m, []).data[0].x) == ["0", "1", "2"]


SWEEP_ROWS = [
    {"seed": s, "scenario": "-", "budget": 0, "model": "baseline", "clean_acc": 0.90 + s / 100, "poison_acc": 0.9}
    for s in (0, 1, 2)
] + [
    {
        "seed": s,
        "scenario": sc,
        "budget": b,
        "model": m,
        "clean_acc": 0.8 + b / 10_000 + s / 100,
        "poison_acc": 0.7 + s / 100,
        "asr": 0.05,
        "flagged": 100 + s,
        "precision": None if sc == "no_attack" else 0.2 + s / 10,
        "recall": None if sc == "no_attack" else 1.0,
        "false_positives": 80 + 10 * s,
    }
    for s in (0, 1, 2)
    for sc in ("attack", "no_attack")
    for b in (1000, 500)
    for m in ("student", "finetuned")
]


def test_sweep_accuracy_figure_means_std_bars_baseline_line_and_band():
    fig = sweep_accuracy_figure(SWEEP_ROWS, "attack")
    assert [t.name for t in fig.data] == [
        "Distilled student · clean_acc",
        "Distilled student · poison_acc",
        "Fine-tuned student · clean_acc",
        "Fine-tuned student · poison_acc",
    ]
    clean = fig.data[0]
    assert list(clean.x) == [500, 1000]
    assert list(clean.y) == pytest.approx([0.86, 0.91])  # means over seeds 0, 1, 2
    assert list(clean.error_y.array) == pytest.approx([0.01, 0.01])  # stdev of (.85, .86, .87)
    assert "mean ± std over 3 seeds" in fig.layout.title.text
    assert list(clean.customdata) == [" ± 1.0% over 3 seeds"] * 2
    rect, line = fig.layout.shapes
    assert line.y0 == pytest.approx(0.91) and line.line.dash == "dash"
    assert (rect.y0, rect.y1) == pytest.approx((0.90, 0.91))


def test_sweep_figures_mean_and_sample_std_against_numpy():
    # skewed seeds: the mean (not the median) and the sample standard deviation (ddof=1)
    acc = {0: [0.80, 0.81, 0.90], 1: [0.60, 0.70]}  # budget 500: 3 seeds, budget 1000: 2 seeds
    rows = [
        {
            "seed": s,
            "scenario": "attack",
            "budget": 500 * (1 + b),
            "model": "student",
            "clean_acc": v,
            "false_positives": 10 * v,
        }
        for b, vals in acc.items()
        for s, v in enumerate(vals)
    ]
    rows.append({"seed": 0, "scenario": "attack", "budget": 2000, "model": "student", "clean_acc": 0.5})
    rows[-1]["false_positives"] = 5.0
    clean = sweep_accuracy_figure(rows, "attack").data[0]
    assert clean.name == "Distilled student · clean_acc"
    want = [np.mean(acc[0]), np.mean(acc[1]), 0.5]
    assert list(clean.y) == pytest.approx(want)
    assert clean.y[0] != pytest.approx(np.median(acc[0]))
    std = list(clean.error_y.array)
    assert std[:2] == pytest.approx([np.std(acc[0], ddof=1), np.std(acc[1], ddof=1)]) and std[2] is None
    assert clean.customdata[1].endswith("over 2 seeds") and clean.customdata[2] == ""  # one seed: no spread
    fp = sweep_detox_figure(rows, "attack").data[0]
    assert list(fp.y) == pytest.approx([10 * w for w in want])
    assert fp.error_y.array[0] == pytest.approx(10 * np.std(acc[0], ddof=1))
    one_seed = [r for r in rows if r["seed"] == 0]
    fig = sweep_accuracy_figure(one_seed, "attack")
    assert fig.data[0].error_y.array is None and "seeds" not in fig.layout.title.text


def test_sweep_detox_figure_false_positives_and_precision():
    fig = sweep_detox_figure(SWEEP_ROWS, "attack")
    fp, precision, recall = fig.data
    assert fp.type == "bar" and list(fp.x) == ["500", "1,000"] and list(fp.y) == [90, 90]
    assert list(fp.error_y.array) == pytest.approx([10, 10])  # stdev of (80, 90, 100)
    assert precision.yaxis == "y2" and list(precision.y) == pytest.approx([0.3, 0.3])
    assert recall.name == "recall" and list(recall.error_y.array) == [0, 0]
    assert "mean ± std over 3 seeds" in fig.layout.title.text
    # no attack: precision and recall are undefined, only the false positives remain
    assert [t.name for t in sweep_detox_figure(SWEEP_ROWS, "no_attack").data] == ["false_positives"]


def _report(kind: str = "demo") -> dict:
    ev = {
        "clean_acc": 0.9,
        "poison_acc": 0.2,
        "asr": 0.8,
        "n_clean": 4,
        "n_poison": 3,
        "confusion_clean": [[2, 0], [1, 1]],
        "confusion_poison": [[0, 2], [0, 1]],
    }
    return {
        "kind": kind,
        "teacher": ev,
        "student": {**ev, "clean_acc": 0.85, "asr": 0.01},
        "finetuned": {**ev, "clean_acc": 0.876, "asr": 0.02},
        "detox": {"total": 1000, "flagged": 123, "kept": 877, "precision": 0.5, "recall": 1.0, "false_positives": 61},
        "notes": ["No trigger <given>"],
        "model": {"spec": {"arch": "paper-cnn", "num_classes": 2, "class_names": ["cat", "<script>dog</script>"]}},
    }


def test_metric_bars_and_models_in_paper_order():
    r = _report()
    r["baseline"] = r.pop("teacher") | {"asr": None}
    r["teacher"] = dict(r["baseline"])
    assert present_models(r) == ["baseline", "teacher", "student", "finetuned"]
    fig = metric_bars(r)
    assert len(fig.data) == 4 and list(fig.data[2].y) == [0.85, 0.2, 0.01]
    assert class_names_of({"kind": "demo"})[7] == "Sneaker"
    assert class_names_of({"kind": "audit", "teacher": r["teacher"]}) == ("0", "1")


# ---- HTML report ----------------------------------------------------------------------------------


def test_html_report_is_self_contained_and_escaped():
    job = SimpleNamespace(id=7, kind="audit", label="<script>alert(1)</script>", finished_at=None, run_dir="/x")
    html = audit_report_html(job, _report("audit"))
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>dog</script>" not in html and "No trigger &lt;given&gt;" in html
    for metric in ("clean_acc", "poison_acc", "asr", "flagged", "precision", "recall", "false_positives"):
        assert metric in html
    assert "87.6 %" in html and "123 of 1,000" in html and "61" in html
    # plotly.js is inline exactly once, nothing is loaded from the network
    assert html.count("plotly.js v") == 1 and len(html) > 1_000_000
    assert not re.search(r"<script[^>]*\bsrc=", html) and 'src="https://cdn.plot.ly' not in html
    assert html.count('class="plotly-graph-div"') == 6


def test_html_report_of_a_real_sweep_has_table_and_curves(kdaudit_home):
    store = JobStore(kdaudit_home)
    job = store.get(2)
    report = json.loads((Path(job.run_dir) / "report.json").read_text())
    html = audit_report_html(job, report)
    assert "<table>" in html and "clean_acc" in html and "false_positives" in html
    assert html.count('class="plotly-graph-div"') == 4  # accuracy + detox × attack / no attack
    assert markdown_tables_to_html("| a | <b> |\n|---|---|\n| 1 | 2 |\nNote") == (
        "<table><thead><tr><th>a</th><th>&lt;b&gt;</th></tr></thead><tbody><tr><td>1</td><td>2</td></tr>"
        "</tbody></table>\n<p>Note</p>"
    )


def test_model_zip_holds_weights_and_spec(kdaudit_home):
    from app.results import model_zip

    run_dir = Path(JobStore(kdaudit_home).get(1).run_dir)
    with zipfile.ZipFile(io.BytesIO(model_zip(run_dir))) as z:
        assert sorted(z.namelist()) == ["finetuned.json", "finetuned.safetensors"]
