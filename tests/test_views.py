"""kdcore.views: what a run keeps at its end for the dashboard's first visit, and the pages' use of
it (stored results for exactly their inputs, computing otherwise, stale files ignored).

A tiny run directory by hand: digits-sized paper-cnn teacher and student, 40 training and 30 test
images, a candidates.csv, a BadNets trigger."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore import views
from kdcore.candidates import Candidate, read_candidates, write_candidates
from kdcore.data.imageset import ImageSet
from kdcore.explain import compare_norms
from kdcore.models.loading import save_model
from kdcore.models.registry import build_model
from kdcore.run_context import RunContext
from kdcore.train import seeded_model
from tests.conftest import DIGITS_SPEC, TRIGGER


def _images(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    return ImageSet(x, torch.arange(n) % 10, tuple(f"c{i}" for i in range(10)))


@pytest.fixture()
def run(tmp_path) -> RunContext:
    spec = DIGITS_SPEC
    teacher = seeded_model(lambda: build_model(spec), 0).eval()
    save_model(seeded_model(lambda: build_model(spec), 1), spec, tmp_path / "models" / "student.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"kind": "audit"}))
    train, test = _images(40, 0), _images(30, 1)
    order = [7, 3, 21, *[i for i in range(40) if i not in (7, 3, 21)]]
    rows = [
        Candidate(r + 1, i, "", int(train.labels[i]), "", 0, 1, 0.9, 0.5, 1.0 - r / 40, r < 3, None)
        for r, i in enumerate(order)
    ]
    write_candidates(tmp_path / "candidates.csv", rows)
    return RunContext(tmp_path, "audit", {"kind": "audit"}, spec, teacher, train, test, TRIGGER, None)


def test_write_views_keeps_the_first_visit_and_reads_back(run):
    views.write_views(run)
    out = run.run_dir / "view"
    kept_files = {"run.json", "top.csv", "candidates.npz", "train_top.npz", "explain.npz"}
    kept_files |= {"teacher.safetensors", "teacher.json"}
    assert {p.name for p in out.iterdir()} == kept_files
    teacher, _ = views.load_teacher(run.run_dir)  # the CPU copy the view saved: the same weights
    for a, b in zip(teacher.state_dict().values(), run.teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    view = views.read_view(run.run_dir)
    assert (view.kind, view.n_train, view.n_test, view.spec, view.trigger) == ("audit", 40, 30, run.spec, TRIGGER)
    assert view.layers["last_conv"] and view.train_classes == run.train.class_names
    kept = views.top_images(run.run_dir)
    assert list(kept)[:3] == [7, 3, 21] and len(kept) == 40  # fewer rows than TOP_ROWS: all of them
    assert np.array_equal(kept[21][0], run.train.images[21].numpy()) and kept[21][1] == int(run.train.labels[21])
    assert [r.index for r in views.top_candidates(run.run_dir, 2)] == [7, 3]
    assert views.top_candidates(run.run_dir, views.TOP_ROWS + 1) is None


def test_stored_results_equal_a_fresh_computation(run):
    views.write_views(run)
    layer = views.read_view(run.run_dir).layers["last_conv"]
    x = run.train.images[torch.tensor([7, 3])]
    stacked = torch.cat([x, TRIGGER.stamp(x)]).numpy()
    chosen = (TRIGGER.target,) * 4  # the default second map: the trigger target
    student, s_spec = run.model("student")
    for name, (model, spec) in {"teacher": (run.teacher, run.spec), "student": (student, s_spec)}.items():
        kept = views.stored(run.run_dir, views.gradcam_key(name, layer, stacked, chosen))
        fresh = views.gradcam_panels(model, views.at_layer(spec, layer), stacked, chosen)
        for k, v in zip(("probs", "over_pred", "over_chosen"), fresh, strict=True):
            np.testing.assert_array_equal(kept[k], v)
        for one in (stacked[[0, 2]], stacked[[1, 3]]):  # each picked image's map: clean, + trigger
            acts = views.stored(run.run_dir, views.activations_key(name, layer, one))["acts"]
            np.testing.assert_array_equal(acts, views.layer_activations(model, views.at_layer(spec, layer), one))
    norms = views.stored_norms(run.run_dir, views.norms_key(["teacher", "student"], layer, views.NORM_IMAGES, ""))
    models = {
        "teacher": (run.teacher, views.at_layer(run.spec, layer)),
        "student": (student, views.at_layer(s_spec, layer)),
    }
    clean = views.norm_sample(run.test, TRIGGER)
    fresh = compare_norms(models, clean, TRIGGER, role=views.ACT_ROLE, relu=True)
    for m in fresh:
        for cond in ("clean", "triggered"):
            assert norms[m][cond].to_dict() == fresh[m][cond].to_dict()
    other = views.gradcam_key("teacher", layer, stacked[:1], chosen[:1])  # another selection: not kept
    assert views.stored(run.run_dir, other) is None


def test_a_stale_or_missing_view_is_not_used(run):
    assert views.read_view(run.run_dir) is None and views.top_images(run.run_dir) == {}
    views.write_views(run)
    assert views.read_view(run.run_dir) is not None
    student = run.run_dir / "models" / "student.safetensors"
    st = student.stat()
    os.utime(student, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the model was written again
    assert views.read_view(run.run_dir) is None
    assert views.top_images(run.run_dir) == {} and views.top_candidates(run.run_dir, 2) is None
    layer = "features.2"
    assert views.stored(run.run_dir, views.norms_key(["teacher", "student"], layer, views.NORM_IMAGES, "")) is None


def test_the_columnar_candidates_are_the_csvs_rows_until_the_csv_is_rewritten(run):
    from app import review_queue as rq

    csv_path = run.run_dir / "candidates.csv"
    assert views.candidates(run.run_dir) is None  # no view yet
    views.write_views(run)
    assert views.candidates(run.run_dir) == read_candidates(csv_path)
    assert rq.load_candidates(run.run_dir) == read_candidates(csv_path)

    rows = list(read_candidates(csv_path))
    rows[0] = dataclasses.replace(rows[0], flagged=False, score=-0.5)  # a re-run ranks differently
    write_candidates(csv_path, rows)
    st = csv_path.stat()
    os.utime(csv_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # newer than the view, whatever the clock
    assert views.candidates(run.run_dir) is None
    loaded = rq.load_candidates(run.run_dir)  # the CSV, re-read: its mtime is part of the cache key
    assert loaded == read_candidates(csv_path) and (loaded[0].flagged, loaded[0].score) == (False, -0.5)


def test_a_refine_run_reads_its_source_runs_view(run, tmp_path_factory):
    views.write_views(run)
    refine = tmp_path_factory.mktemp("refine")
    (refine / "config.json").write_text(json.dumps({"kind": "refine", "source_run": str(run.run_dir)}))
    assert views.read_view(refine).run_dir == Path(run.run_dir)
    assert len(views.top_images(refine)) == 40


def test_the_pages_use_the_view_and_compute_what_it_lacks(run, monkeypatch):
    import streamlit as st

    from app import explain_figures as ef
    from app import review_queue as rq

    st.cache_resource.clear()
    st.cache_data.clear()
    views.write_views(run, teacher_file=save_model(run.teacher, run.spec, run.run_dir / "teacher.safetensors"))
    run_dir = str(run.run_dir)
    layer = ef.teacher_layers(run_dir)["last_conv"]

    def no_rebuild(*a, **k):
        raise AssertionError("the page rebuilt the run for what its view keeps")

    monkeypatch.setattr(ef, "load_context", no_rebuild)
    monkeypatch.setattr(rq, "full_train_images", no_rebuild)
    x = run.train.images[torch.tensor([7, 3])]
    stacked = torch.cat([x, TRIGGER.stamp(x)]).numpy()
    probs, _, _ = ef.gradcam_panels(run_dir, "teacher", stacked, (TRIGGER.target,) * 4, layer)
    assert probs.shape == (4, 10)
    stats = ef.norm_stats(run_dir, ("teacher", "student"), layer=layer)
    assert len(stats["teacher"]["clean"]) == len(views.norm_sample(run.test, TRIGGER))
    images, labels = ef.train_images(run_dir, [21, 3])
    assert torch.equal(images[0], run.train.images[21]) and labels == [int(run.train.labels[21]), 3]
    gallery = rq.train_images(run_dir)
    assert len(gallery) == 40 and np.array_equal(gallery.images[7], run.train.images[7].numpy())

    # another image: not kept, so computed, from the recorded teacher file (still no rebuilt run)
    fresh, _, _ = ef.gradcam_panels(run_dir, "teacher", stacked[:1], (TRIGGER.target,), layer)
    np.testing.assert_allclose(fresh, probs[:1], atol=1e-6)


def test_load_teacher_reads_the_recorded_file_without_the_run(run, tmp_path_factory):
    assert views.load_teacher(run.run_dir) is None  # no view yet: the page rebuilds the run
    file = save_model(run.teacher, run.spec, tmp_path_factory.mktemp("stage") / "model.safetensors")
    views.write_views(run, teacher_file=file)
    model, spec = views.load_teacher(run.run_dir)
    x = run.test.images[:5]
    assert spec == run.spec
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(spec.normalize(x)), run.teacher(spec.normalize(x)))
