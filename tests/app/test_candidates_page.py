"""The poison-candidates review page (AppTest on a real finished digits audit) and its pure helpers."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.review_queue import PAGE_SIZE, filter_rows, load_candidates, thumbnail
from kdcore import views
from kdcore.candidates import Candidate, read_candidates
from kdcore.errors import InputError
from kdcore.jobs.review import Reviews
from kdcore.jobs.store import JobStore
from tests.app.conftest import open_page

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "candidates.py")


@pytest.fixture()
def home(kdaudit_home, tmp_path, monkeypatch):
    """A private copy of the shared job database (same finished runs), so verdicts and queued
    refine jobs written here never leak into other tests."""
    src = sqlite3.connect(JobStore(kdaudit_home).path)
    dst = sqlite3.connect(tmp_path / "jobs.sqlite3")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path))
    return tmp_path


def _page(timeout: float = 120) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=timeout)
    at.query_params["job"] = "1"
    return at.run()


def _run_dir(home) -> str:
    return JobStore(home).get(1).run_dir


def _gallery(at: AppTest) -> list[int]:
    return [int(w.key.removeprefix("verdict-")) for w in at.segmented_control if w.key.startswith("verdict-")]


def _metric(at: AppTest, label: str) -> int:
    return int(next(m for m in at.metric if m.label == label).value.replace(",", ""))


def test_the_runs_columnar_candidates_are_its_csvs_rows(home):
    """The real audit kept candidates.npz at its end: read back, the same rows of the same types as
    the CSV reader's, and the review queue serves those."""
    run_dir = _run_dir(home)
    csv_rows = read_candidates(Path(run_dir) / "candidates.csv")
    kept = views.candidates(run_dir)
    assert kept is not None and len(kept) == len(csv_rows) > 0
    assert kept == csv_rows and load_candidates(run_dir) == csv_rows
    typed = lambda rows: [tuple(type(v) for v in dataclasses.astuple(r)) for r in rows]
    assert typed(kept) == typed(csv_rows)
    assert any(r.source for r in kept) and {r.label_name for r in kept} == {r.label_name for r in csv_rows}


def test_page_shows_flagged_candidates_with_images(home):
    at = _page()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert views.candidates(_run_dir(home)) is not None  # the page read the columnar copy
    rows = read_candidates(Path(_run_dir(home)) / "candidates.csv")  # the counts are the CSV's
    flagged = [r.index for r in rows if r.flagged]
    assert flagged, "the digits audit should flag some samples"
    assert _gallery(at) == flagged[:PAGE_SIZE]  # ranked order, flagged only by default
    assert len(at.image) == len(_gallery(at)) >= 1
    assert _metric(at, "Flagged") == len(flagged) == _metric(at, "Shown")
    assert _metric(at, "Reviewed") == 0


def test_verdict_widget_stores_verdict_with_reviewer_and_history(home):
    at = _page()
    at.sidebar.text_input(key="reviewer-input").input("ana").run()
    sample = _gallery(at)[0]
    at.segmented_control(key=f"verdict-{sample}").set_value("poison").run()
    assert not at.exception, at.exception

    rv, run_dir = Reviews(JobStore(home)), _run_dir(home)
    v = rv.get(run_dir)
    assert set(v) == {sample}
    assert (v[sample].verdict, v[sample].reviewer) == ("poison", "ana")
    assert [(h["verdict"], h["previous"], h["reviewer"]) for h in rv.history(run_dir, sample)] == [
        ("poison", None, "ana")
    ]
    assert _metric(at, "Reviewed") == 1
    assert at.segmented_control(key=f"verdict-{sample}").value == "poison"

    at.segmented_control(key=f"verdict-{sample}").set_value("clean").run()
    assert rv.get(run_dir)[sample].verdict == "clean"
    assert [h["previous"] for h in rv.history(run_dir, sample)] == [None, "poison"]


def test_bulk_action_marks_exactly_the_page_and_clear_undoes_it(home):
    at = _page()
    page = _gallery(at)
    rv, run_dir = Reviews(JobStore(home)), _run_dir(home)

    at.button(key="bulk-clean").click().run()
    assert not at.exception, at.exception
    v = rv.get(run_dir)
    assert set(v) == set(page)
    assert {x.verdict for x in v.values()} == {"clean"}
    assert all(at.segmented_control(key=f"verdict-{s}").value == "clean" for s in page)  # widgets follow the store

    at.button(key="bulk-clear").click().run()
    assert rv.get(run_dir) == {}
    assert all(at.segmented_control(key=f"verdict-{s}").value is None for s in page)


def test_filters_reduce_the_queue(home):
    at = _page()
    flagged = _metric(at, "Shown")
    at.toggle(key="filter-flagged").set_value(False).run()
    everything = _metric(at, "Shown")
    assert everything > flagged

    rows = load_candidates(_run_dir(home))
    label = next(r.label for r in rows if r.flagged)
    at.toggle(key="filter-flagged").set_value(True).run()
    at.multiselect(key="filter-classes").set_value([label]).run()
    assert _metric(at, "Shown") == sum(r.flagged and r.label == label for r in rows) < flagged
    assert all(next(r for r in rows if r.index == s).label == label for s in _gallery(at))

    at.radio(key="filter-verdict").set_value("poison").run()
    assert _metric(at, "Shown") == 0
    assert _gallery(at) == []
    assert not at.exception, at.exception


def test_refine_button_queues_a_refine_job_with_the_verdicts_and_opens_jobs(home):
    # the copied database may hold refine jobs another test file queued before this one (any order)
    before = {j.id for j in JobStore(home).list()}
    at = open_page("candidates", job=1, timeout=120)  # inside st.navigation, so switch_page works
    assert at.button(key="refine").disabled  # nothing to refine with yet
    sample = _gallery(at)[0]
    at.segmented_control(key=f"verdict-{sample}").set_value("clean").run()
    at.button(key="refine").click().run()

    refine = [j for j in JobStore(home).list() if j.kind == "refine" and j.id not in before]
    assert len(refine) == 1
    job = refine[0]
    assert (job.parent_id, job.state) == (1, "queued")
    assert [tuple(p) for p in job.config["verdicts"]] == [(sample, "clean")]
    assert job.config["source_run"] == _run_dir(home)
    assert not at.exception, at.exception
    assert at.title[0].value == "Jobs" and at.query_params["job"] == str(job.id)


def test_run_without_candidates_explains_and_bad_csv_is_a_user_error(home, tmp_path):
    store = JobStore(home)
    ids = []
    for name, csv_text in (("no-train", None), ("bad-csv", "rank,index\n1,oops\n")):
        run = tmp_path / name
        run.mkdir()
        if csv_text:
            (run / "candidates.csv").write_text(csv_text)
        j = store.submit("audit", store.get(1).config, label=name, run_dir=str(run))
        store.claim("cpu", 0, job_id=j.id)
        store.finish(j.id, "succeeded")
        ids.append(j.id)

    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["job"] = str(ids[0])
    at.run()
    assert not at.exception, at.exception
    assert any("no poison candidates" in i.value for i in at.info)
    assert len(at.image) == 0

    at.query_params["job"] = str(ids[1])
    at.run()
    assert not at.exception, at.exception
    assert any("missing column" in e.value for e in at.error)


# ---------------------------------------------------------------- pure helpers


def _row(index, label=0, pred=0, score=0.5, flagged=True) -> Candidate:
    return Candidate(index + 1, index, "", label, "", pred, 1 - pred, 0.9, 0.1, score, flagged)


def test_filter_rows_combines_every_filter_in_ranked_order():
    rows = [
        _row(0, label=7, pred=7, score=0.99),
        _row(1, label=7, pred=1, score=0.40),
        _row(2, label=3, pred=3, score=0.20),
        _row(3, label=3, pred=7, score=-0.1, flagged=False),
    ]
    idx = lambda rs: [r.index for r in rs]
    assert idx(filter_rows(rows)) == [0, 1, 2]
    assert idx(filter_rows(rows, only_flagged=False)) == [0, 1, 2, 3]
    assert idx(filter_rows(rows, classes=[7])) == [0, 1]
    assert idx(filter_rows(rows, predicted=[7], only_flagged=False)) == [0, 3]
    assert idx(filter_rows(rows, score_range=(0.3, 1.0))) == [0, 1]
    verdicts = {0: "poison", 2: "clean"}
    assert idx(filter_rows(rows, verdict_filter="unreviewed", verdicts=verdicts)) == [1]
    assert idx(filter_rows(rows, verdict_filter="poison", verdicts=verdicts)) == [0]
    assert idx(filter_rows(rows, verdict_filter="unsure", verdicts=verdicts)) == []
    assert idx(filter_rows(rows, classes=[3], verdict_filter="clean", verdicts=verdicts)) == [2]
    with pytest.raises(InputError):
        filter_rows(rows, verdict_filter="maybe")


def test_thumbnail_is_nearest_neighbour_rgb():
    grey = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8)
    t = thumbnail(grey)
    assert t.shape == (112, 112, 3) and t.dtype == np.uint8
    k = 112 // 8
    assert (t[::k, ::k, 0] == grey[0].numpy()).all()  # every source pixel is a k×k block
    assert (t[k * 2 : k * 3, k * 5 : k * 6] == int(grey[0, 2, 5])).all()
    assert (t[..., 0] == t[..., 1]).all() and (t[..., 1] == t[..., 2]).all()

    rgb = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    t = thumbnail(rgb)
    assert t.shape == (112, 112, 3)
    assert (t[::4, ::4] == rgb.transpose(1, 2, 0)).all()
    assert (t[1, 2] == rgb[:, 0, 0]).all()

    with pytest.raises(InputError):
        thumbnail(np.zeros((1, 8, 8), dtype=np.float32))
