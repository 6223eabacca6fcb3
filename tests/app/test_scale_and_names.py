"""Numbers with their scale and one name per sample (issue 14), on the finished digits audit:
the flagged count "of N (p %)", the score histogram and its "show only score ≥" filter, the same
sample name in the gallery, Explain's picker and the HTML report; the small layout fixes."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from app.candidates import HIST_BINS, flagged_cut, score_bounds, score_histogram_svg
from app.report_html import audit_report_html, candidates_html
from app.review_queue import load_candidates
from kdcore.candidates import Candidate, sample_name, share_of
from kdcore.jobs.store import JobStore

ROOT = Path(__file__).resolve().parents[2]


def _page(name: str, timeout: float = 180) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app_pages" / f"{name}.py"), default_timeout=timeout)
    at.query_params["job"] = "1"
    return at.run()


def _rows(home) -> tuple[Candidate, ...]:
    return load_candidates(JobStore(home).get(1).run_dir)


def test_candidates_page_shows_flagged_with_its_scale_and_a_score_histogram(kdaudit_home):
    rows = _rows(kdaudit_home)
    flagged = [r for r in rows if r.flagged]
    at = _page("candidates")
    assert not at.exception
    m = next(m for m in at.metric if m.label == "Flagged")
    assert m.value == f"{len(flagged):,}" and m.proto.delta == share_of(len(flagged), len(rows))
    assert m.proto.delta.startswith(f"of {len(rows):,} (")
    hist = [m.value for m in at.markdown if m.value.startswith("<svg")]
    assert len(hist) == 1 and ">flagged<" in hist[0] and not at.get("plotly_chart")  # drawn as SVG
    # the gallery's first cards are named by sample_name: the file it came from and its index
    captions = [c for img in at.image for c in img.captions][:3]
    assert captions == [sample_name(r.index, r.source) for r in flagged[:3]]
    assert all(" · #" in c and "/" in c for c in captions), captions  # digits audit: files in class folders


def test_show_only_score_at_least_filters_the_queue(kdaudit_home):
    rows = _rows(kdaudit_home)
    at = _page("candidates")
    slider = at.slider(key="filter-score")
    assert slider.label == "Show only score ≥" and slider.value == score_bounds(rows)[0]
    x = sorted(r.score for r in rows if r.flagged)[len([r for r in rows if r.flagged]) // 2]
    x = round(x, 2)
    slider.set_value(x).run()
    assert not at.exception
    shown = int(next(m for m in at.metric if m.label == "Shown").value.replace(",", ""))
    assert shown == sum(r.flagged and r.score >= x for r in rows) > 0
    assert at.toggle(key="filter-flagged").label == "Flagged only"


def _row(i: int, score: float, flagged: bool, source: str = "") -> Candidate:
    return Candidate(i + 1, i, source, 0, "", 0, 1, 0.9, 0.1, score, flagged, dataset="digits")


def test_score_histogram_counts_every_sample_and_marks_the_cut():
    rows = [_row(0, 0.95, True), _row(1, 0.8, True), _row(2, 0.1, False), _row(3, -0.4, False)]
    assert flagged_cut(rows) == (0.8, True)  # a clean cut: every flagged score ≥ every other
    assert score_bounds(rows) == (-0.4, 0.95)
    svg = score_histogram_svg(rows, min_score=0.5)
    bars = re.findall(
        r"<title>(flagged|not flagged): (\d+) samples, suspicion score ([-\d.e]+) to ([-\d.e]+)</title>", svg
    )
    assert sum(int(n) for k, n, *_ in bars if k == "flagged") == 2
    assert sum(int(n) for k, n, *_ in bars if k == "not flagged") == 2
    assert all(float(a) <= 0.95 and float(b) >= -0.4 for *_, a, b in bars)  # the bins span the scores
    width = (0.95 + 0.4) / HIST_BINS
    flagged_bins = sorted(float(a) for k, _, a, _ in bars if k == "flagged")
    assert flagged_bins[0] == pytest.approx(0.8 - (0.8 + 0.4) % width, abs=1e-3)  # 0.8 falls in its bin
    assert ">flagged cut 0.80<" in svg and ">showing ≥ 0.50<" in svg  # the flagged cut and the "show only ≥" value
    assert svg.count("<line") == 1 + 2  # the axis and two marks
    # KD disagreement flags are not a score cut: say so instead of calling it one
    mixed = [_row(0, 0.9, True), _row(1, 0.95, False), _row(2, 0.2, True)]
    assert flagged_cut(mixed) == (0.2, False)
    mixed_svg = score_histogram_svg(mixed)
    assert ">lowest flagged 0.20<" in mixed_svg and "flagged cut" not in mixed_svg and "showing" not in mixed_svg
    assert flagged_cut([_row(0, 0.1, False)]) is None


def test_explain_names_the_top_candidate_as_the_gallery_does_and_never_calls_it_clean(kdaudit_home):
    top = _rows(kdaudit_home)[0]
    at = _page("explain")
    assert not at.exception
    picked = at.multiselect(key="explain_pick")
    assert picked.value[0] == picked.options[0]
    assert picked.options[0].startswith(f"poison candidate #1 · {top.name} · label ")
    captions = [c for img in at.image for c in img.captions]
    assert any(c.startswith("poison candidate") for c in captions), captions
    assert not any(c.startswith("clean") for c in captions), captions


def test_results_detox_summary_prints_flagged_with_its_scale(kdaudit_home):
    rows = _rows(kdaudit_home)
    at = _page("results")
    assert not at.exception
    m = next(m for m in at.metric if m.label == "flagged")
    n = sum(r.flagged for r in rows)
    assert m.value == f"{n:,}" and m.proto.delta == share_of(n, len(rows))


def test_html_report_lists_top_candidates_by_their_one_name(kdaudit_home):
    job = JobStore(kdaudit_home).get(1)
    rows = _rows(kdaudit_home)
    from app.results import load_report

    html = audit_report_html(job, load_report(job.run_dir))
    assert "Top 20 poison candidates" in html
    assert all(r.name in html for r in rows[:20])
    n = sum(r.flagged for r in rows)
    assert f"{n:,} of {len(rows):,} (" in html
    assert candidates_html(()) == ""
    escaped = candidates_html((_row(0, 0.9, True, source="<b>x</b>.png"),))
    assert "&lt;b&gt;x&lt;/b&gt;.png · #0" in escaped and "<b>x" not in escaped


def _colour_app():
    import streamlit as st

    from app.trigger_form import colour_ui

    st.session_state["rgb"] = colour_ui(st.container(), key="trigger_color")


def test_colour_swatch_has_a_border_and_shows_its_value():
    at = AppTest.from_function(_colour_app).run()
    assert not at.exception
    assert at.session_state["rgb"] == [255, 255, 255]
    assert at.caption[0].value == "#FFFFFF · RGB 255, 255, 255"
    assert any("stColorPickerBlock" in h.proto.body and "border" in h.proto.body for h in at.get("html"))
    at.color_picker(key="trigger_color").set_value("#ffa500").run()
    assert at.session_state["rgb"] == [255, 165, 0] and at.caption[0].value == "#FFA500 · RGB 255, 165, 0"


def _compare_app():
    from app.defenses import compare_ui

    rows = [
        {"model": "ac (#3)", "job": 3, "family": "detector", "clean_acc": None, "poison_acc": None, "asr": None}
        | {"flagged": 12, "precision": None, "recall": None, "wall_s": 1.5, "needs_labels": False, "finding": ""}
    ]
    compare_ui(rows)


def test_defenses_comparison_prints_missing_values_as_not_measured():
    at = AppTest.from_function(_compare_app).run()
    assert not at.exception
    df = at.dataframe[0]
    assert df.proto.placeholder == "—"
    assert any("— = not measured" in c.value for c in at.caption)


@pytest.mark.parametrize("job", [SimpleNamespace(run_dir="", id=1, kind="audit")])
def test_report_without_a_run_directory_has_no_candidates_section(job):
    assert "poison candidates" not in audit_report_html(job, {"kind": "audit"})
