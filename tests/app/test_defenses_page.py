"""The Defenses page (AppTest on the digits audit and real finished `defend` jobs) and its pure
helpers: the settings form generated from each method's config, the comparison rows, the figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.defense_charts import defense_tradeoff_figure, mask_norms_figure, pruning_sweep_figure
from app.defense_settings import Setting, params_from, parse_tuple, settings_of, to_param
from kdcore.defenses import DEFENSES, LinfPruning, NeuralCleanse, Repairer
from kdcore.errors import ConfigError
from kdcore.jobs.store import JobStore
from kdcore.report import METRICS, ROLES
from tests.app.conftest import DEFENSE_JOBS, open_page


def _page(job: int | None = 1) -> AppTest:
    at = open_page("defenses", job=job, timeout=120)
    assert not at.exception, at.exception
    return at


def _report(home, job_id: int) -> dict:
    return json.loads((Path(JobStore(home).get(job_id).run_dir) / "report.json").read_text())


def _compare_table(at: AppTest):
    return next(d.value for d in at.dataframe if "model" in d.value.columns and "asr" in d.value.columns)


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _captions(at: AppTest) -> list[str]:
    return [i.proto.imgs[0].caption for i in at.image]


# ---- the page ---------------------------------------------------------------------------------


def test_page_without_audits_says_how_to_get_one(tmp_path, monkeypatch):
    import streamlit as st

    monkeypatch.setenv("KDAUDIT_HOME", str(tmp_path))
    st.cache_resource.clear()
    at = _page(job=None)
    assert any("No finished audits yet" in i.value for i in at.info)
    assert not at.dataframe and not at.button


def test_every_method_is_offered_with_a_form_of_its_settings(defenses_env):
    at = _page()
    assert len(at.selectbox(key="defense-method").options) == len(DEFENSES)
    for cls in DEFENSES.values():
        at.selectbox(key="defense-method").set_value(cls).run()
        assert not at.exception, (cls.name, at.exception)
        keys = {w.key for kind in ("number_input", "text_input", "selectbox", "checkbox") for w in at.get(kind)}
        fields = {s.name for s in settings_of(cls.config_class)}
        assert {f.name for f in dataclasses.fields(cls.config_class)} <= {f.split(".")[0] for f in fields}
        assert {f"defset-{cls.name}-{f}" for f in fields} <= keys, cls.name
        text = " ".join(m.value for m in at.markdown)
        assert cls.summary in text
        labelled = [w.value for w in at.warning if "Labelled-data baseline" in w.value]
        assert bool(labelled) == cls.needs_labels, cls.name
        # The digits audit has a training set but no labelled clean images (no upload here).
        assert at.button(key="defense-submit").disabled == ("clean_labeled" in cls.needs), cls.name


def test_submit_queues_a_defend_job_with_the_form_settings(defenses_env):
    home, _ = defenses_env
    store = JobStore(home)
    at = _page()
    at.selectbox(key="defense-method").set_value(LinfPruning).run()
    at.number_input(key="defset-linf-pruning-steps").set_value(7).run()
    at.text_input(key="defset-linf-pruning-thresholds").input("3, 1.5").run()
    at.number_input(key="defense-seed").set_value(3).run()
    before = len(store.list())
    at.button(key="defense-submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]

    jobs = store.list()
    assert len(jobs) == before + 1
    job = jobs[0]
    assert (job.kind, job.state, job.label) == ("defend", "queued", "linf-pruning on #1")
    assert job.config["method"] == "linf-pruning"
    assert job.config["source_run"] == store.get(1).run_dir
    assert job.config["seed"] == 3 and job.config["clean_labeled"] == ""
    defaults = dataclasses.asdict(LinfPruning.config_class())
    assert job.config["params"] == {**defaults, "steps": 7, "thresholds": [3.0, 1.5]}
    assert LinfPruning.from_params(job.config["params"]).config.thresholds == (3.0, 1.5)
    assert any(f"#{job.id}" in s.value for s in at.success)
    assert any(f"#{job.id} linf-pruning on #1" in m.value and "queued" in m.value for m in at.markdown)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("steps", 1, "steps must be ≥ 2"), ("thresholds", "3, x", "comma-separated float values")],
)
def test_bad_setting_shows_the_config_error_and_queues_nothing(defenses_env, field, value, message):
    home, _ = defenses_env
    store = JobStore(home)
    at = _page()
    at.selectbox(key="defense-method").set_value(LinfPruning).run()
    key = f"defset-linf-pruning-{field}"
    (at.number_input(key=key).set_value(value) if isinstance(value, int) else at.text_input(key=key).input(value)).run()
    before = len(store.list())
    at.button(key="defense-submit").click().run()
    assert not at.exception, at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert len(store.list()) == before


def test_compare_table_has_the_core_method_and_every_finished_defense(defenses_env):
    home, ids = defenses_env
    at = _page()
    table = _compare_table(at)
    rows = {r["model"]: r for r in table.to_dict("records")}
    source = _report(home, 1)
    core = {ROLES[key]: key for key in ("teacher", "student", "finetuned")}
    for label, key in core.items():
        for m in METRICS:
            assert rows[label][m] == pytest.approx(source[key][m])
    assert rows[ROLES["finetuned"]]["flagged"] == source["detox"]["flagged"]
    assert len(table) == len(core) + len(ids)

    for method, job_id in ids.items():
        report = _report(home, job_id)
        row = rows[f"{method} (#{job_id})"]
        assert row["family"] == DEFENSES[method].family
        assert bool(row["needs_labels"]) == DEFENSES[method].needs_labels
        assert row["wall_s"] == pytest.approx(report["method_wall_s"])
        if report["repaired"]:
            for m in ("clean_acc", "poison_acc", "asr"):
                assert row[m] == pytest.approx(report["repaired"][m])
        else:
            assert row["clean_acc"] is None or np.isnan(row["clean_acc"])
        if report["detection"]:
            assert row["flagged"] == report["detection"]["flagged"]

    chart = _figures(at)[0]  # clean_acc vs asr: the three core models and each repairer (kd too)
    repairers = [m for m in ids if issubclass(DEFENSES[m], Repairer)]
    assert "kd" in repairers and rows[f"kd (#{ids['kd']})"]["flagged"] > 0  # kd repairs and detects
    assert len(chart["data"]) == len(core) + len(repairers)
    point = next(t for t in chart["data"] if t["name"].startswith(f"nad (#{ids['nad']})"))
    assert point["x"] == [pytest.approx(_report(home, ids["nad"])["repaired"]["asr"])]
    assert point["marker"]["symbol"].endswith("-open")  # the labelled-data baseline


def test_neural_cleanse_evidence_shows_norms_and_recovered_triggers(defenses_env):
    home, ids = defenses_env
    job_id = ids["neural-cleanse"]
    at = _page(job=job_id)  # a defend job in the URL opens its source audit, with its evidence
    assert at.query_params["job"] == "1"
    assert at.selectbox(key="evidence-job").value == job_id
    report = _report(home, job_id)
    ev = report["evidence"]

    norms = next(f for f in _figures(at) if f["layout"].get("title", {}).get("text", "").startswith("Mask"))
    assert norms["data"][0]["y"] == [r["l1"] for r in ev["classes"]]
    pngs = sorted(p.stem for p in (Path(JobStore(home).get(job_id).run_dir) / "evidence").glob("*.png"))
    assert sorted(report["evidence_images"]) == pngs
    captions = _captions(at)
    k = len(ev["classes"])
    assert [c.split(" · ")[0] for c in captions[:k]] == [r["name"] for r in ev["classes"]]  # recovered triggers
    assert set(pngs) <= set(captions)  # and every evidence image, captioned with its name
    assert len(captions) == k + 1 + len(pngs)  # triggers, the stamped example, the grid
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["anomaly index"] == f"{ev['most_anomalous']['anomaly_index']:.4g}"
    assert metrics["most anomalous class"] == str(ev["most_anomalous"]["name"])


def test_pruning_and_clustering_evidence_and_downloads(defenses_env):
    home, ids = defenses_env
    at = _page(job=ids["linf-pruning"])
    ev = _report(home, ids["linf-pruning"])["evidence"]
    sweep = next(f for f in _figures(at) if f["layout"]["xaxis"].get("title", {}).get("text", "").startswith("ℓ∞"))
    asr = next(t for t in sweep["data"] if t["name"] == "asr")
    assert asr["x"] == [r["threshold"] for r in ev["sweep"]] and asr["y"] == [r["asr"] for r in ev["sweep"]]
    downloads = [d.proto.label for d in at.get("download_button")]
    assert "⬇ repaired model (.zip)" in downloads and "⬇ candidates.csv" not in downloads

    at.selectbox(key="evidence-job").set_value(ids["activation-clustering"]).run()
    assert not at.exception, at.exception
    ev = _report(home, ids["activation-clustering"])["evidence"]
    table = next(d.value for d in at.dataframe if "silhouette" in d.value.columns)
    assert table["silhouette"].tolist() == [r["silhouette"] for r in ev["classes"]]
    downloads = [d.proto.label for d in at.get("download_button")]
    assert "⬇ candidates.csv" in downloads and "⬇ repaired model (.zip)" not in downloads


def test_unknown_evidence_is_rendered_generically(defenses_env, tmp_path):
    """A method the page knows nothing about: headline, scalars, tables, lists and images still show."""
    home, _ = defenses_env
    store = JobStore(home)
    run = tmp_path / "odd-run"
    (run / "evidence").mkdir(parents=True)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(run / "evidence" / "odd_map.png")
    evidence = {
        "headline": "something odd found",
        "score": 0.25,
        "layer": "features.2",
        "rows": [{"a": 1, "b": {"c": 2}}, {"a": 3, "b": {"c": 4}}],
        "long_list": list(range(50)),
        "short_list": [1, 2],
        "nested": {"x": [1, {"y": 2}]},
        "flat": {"a": 1, "b": "x"},
        "explanation": "a long sentence " * 5,
        "nothing": None,
    }
    report = {"method": "odd", "family": "inspector", "evidence": evidence, "method_wall_s": 1.0, "needs_labels": False}
    (run / "report.json").write_text(json.dumps(report))
    cfg = {"method": "linf-pruning", "source_run": store.get(1).run_dir, "device": "cpu"}
    job = store.submit("defend", cfg, label="odd", run_dir=str(run))
    store.claim("cpu", 0, job_id=job.id)
    store.finish(job.id, "succeeded")

    at = _page(job=job.id)
    assert at.selectbox(key="evidence-job").value == job.id
    assert any("something odd found" in i.value for i in at.info)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["score"] == "0.25" and metrics["layer"] == "features.2"
    assert any(list(d.value.columns) == ["a", "b.c"] for d in at.dataframe)
    markdown = [m.value for m in at.markdown]
    assert "**short_list**: 1, 2" in markdown and "**flat**: a = 1 · b = x" in markdown
    assert "**long_list**: " + ", ".join(map(str, range(40))) + ", … (50 values)" in markdown
    assert "**nothing**: —" in markdown
    assert len(at.json) == 1  # the nested dict
    assert "odd_map" in _captions(at)
    odd = [r for r in _compare_table(at).to_dict("records") if r["model"] == f"odd (#{job.id})"]
    assert len(odd) == 1 and odd[0]["finding"] == "something odd found"


# ---- the settings form, the figures ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_default_form_values_build_the_default_config(name):
    """Every registered method: the form's initial values (as the widgets hand them back) give its defaults."""
    cls = DEFENSES[name]
    raw = {}
    for s in settings_of(cls.config_class):
        if s.kind == "tuple":
            raw[s.name] = ", ".join(str(v) for v in s.default)
        elif s.kind == "json":
            raw[s.name] = json.dumps(s.default)
        else:
            raw[s.name] = s.default
    assert cls.from_params(params_from(cls.config_class, raw)).config == cls.config_class()


def test_settings_kinds_and_documented_choices():
    from kdcore.defenses import BCU, ActivationClustering

    nc = {s.name: s for s in settings_of(NeuralCleanse.config_class)}
    assert nc["steps"].kind == "int" and nc["lr"].kind == "float" and "Adam" in nc["lr"].help
    ac = {s.name: s for s in settings_of(ActivationClustering.config_class)}
    assert ac["reducer"].kind == "choice" and set(ac["reducer"].choices) == {"ica", "pca"}
    assert ac["reducer"].default == ActivationClustering.config_class().reducer == ac["reducer"].choices[0]
    bcu = {s.name: s for s in settings_of(BCU.config_class)}
    assert bcu["schedule"].choices == ("adaptive", "uniform") and bcu["optimizer"].choices == ("adam", "sgd")
    assert (bcu["ratios"].kind, bcu["ratios"].item) == ("tuple", float)
    assert bcu["temperature_ramp"].kind == "bool"
    linf = {s.name: s for s in settings_of(LinfPruning.config_class)}
    assert linf["layer"].kind == "str" and linf["layer"].choices == ()  # free text: any name is accepted


def test_parse_tuple_and_to_param():
    assert parse_tuple("0.5, 1,2 ", float, "x") == (0.5, 1.0, 2.0)
    assert parse_tuple(" ", float, "x") == ()
    assert parse_tuple("a, b", str, "x") == ("a", "b")
    with pytest.raises(ConfigError, match="comma-separated int"):
        parse_tuple("1, 2.5", int, "x")
    assert to_param(Setting("n", "int", 1), 3.0) == 3 and isinstance(to_param(Setting("n", "int", 1), 3.0), int)
    assert to_param(Setting("d", "json", {}), '{"a": 1}') == {"a": 1}
    with pytest.raises(ConfigError, match="JSON"):
        to_param(Setting("d", "json", {}), "{oops")


def test_tradeoff_norms_and_sweep_figures():
    rows = [
        {"model": ROLES["teacher"], "family": "suspect", "clean_acc": 0.97, "asr": 0.98, "needs_labels": None},
        {"model": ROLES["finetuned"], "family": "core method", "clean_acc": 0.92, "asr": 0.02},
        {"model": "nad (#6)", "family": "repairer", "clean_acc": 0.9, "asr": 0.5, "needs_labels": True},
        {"model": "ac (#4)", "family": "detector", "clean_acc": None, "asr": None},
    ]
    fig = defense_tradeoff_figure(rows)
    assert [(t.x[0], t.y[0]) for t in fig.data] == [(0.98, 0.97), (0.02, 0.92), (0.5, 0.9)]
    assert fig.data[2].marker.symbol == "circle-open" and fig.data[0].marker.symbol == "diamond"

    classes = [
        {"class": c, "name": f"c{c}", "l1": 30.0 - 25 * (c == 7), "anomaly_index": 5.0 * (c == 7)} for c in range(10)
    ]
    classes[7]["flagged"] = True
    bars = mask_norms_figure(classes, 2.0).data[0]
    assert list(bars.y) == [r["l1"] for r in classes]
    assert [c for c, col in enumerate(bars.marker.color) if col == "#d62728"] == [7]

    sweep = [
        {"threshold": t, "n_pruned": i, "clean_acc": 0.9, "asr": 1 - i / 3, "agreement": 1.0}
        for i, t in enumerate((3, 2, 1))
    ]
    fig = pruning_sweep_figure(sweep, chosen=2)
    assert [t.name for t in fig.data] == ["clean_acc", "asr", "agreement"]
    assert list(fig.data[1].y) == [1.0, 1 - 1 / 3, 1 - 2 / 3]
    assert fig.layout.xaxis.autorange == "reversed"


def test_fixture_runs_every_registered_method():
    """So the comparison and evidence tests see every method's real report."""
    assert {m for m, _, _ in DEFENSE_JOBS} == set(DEFENSES)
