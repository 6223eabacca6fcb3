"""Explain page: AppTest smoke test on the finished digits audit, and the page's pure figure helpers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.explain_figures import (
    ACT_ROLE,
    GAP_RGB,
    NORM_LABELS,
    VIRIDIS,
    activation_map_image,
    model_label,
    most_driven_channels,
    norm_histograms_svg,
)
from kdcore.explain import NORMS, NormStats
from kdcore.models.layers import choose_layer
from kdcore.models.registry import build_model

PAGE = Path(__file__).resolve().parents[2] / "app_pages" / "explain.py"


def _page(kdaudit_home) -> AppTest:
    at = AppTest.from_file(str(PAGE))
    at.query_params["job"] = "1"
    return at.run(timeout=180)


def test_explain_page_renders_gradcam_norms_and_activation_maps(kdaudit_home):
    at = _page(kdaudit_home)
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("Grad-CAM" in h.value for h in at.subheader)
    captions = [c for img in at.image for c in img.captions]
    # Grad-CAM: 2 default images × (clean, + trigger) × (input + teacher and student × 2 classes) = 20
    # images; activation maps: (teacher, student) × (clean, + trigger) = 4 more
    assert len(at.image) == 20 + 4, captions
    assert sum(c.endswith(("· clean", "· + trigger")) for c in captions) == 4  # the activation maps
    assert sum(c.startswith("→ ") for c in captions) == 8  # predicted-class maps: 2 models × 2 images × 2 rows
    assert at.radio(key="explain_target_mode").value == "target"  # the audit's trigger is known
    assert not at.get("plotly_chart")  # no chart code to load: SVG histograms, images for the maps
    norms = [m.value for m in at.markdown if m.value.startswith("<svg")]
    assert len(norms) == 2 * 3 and all("<title>triggered:" in svg for svg in norms)  # models × ℓ1, ℓ2, ℓ∞
    assert at.selectbox(key="explain_model").value == "student"


def test_explain_page_switches_to_test_images_and_true_label(kdaudit_home):
    at = _page(kdaudit_home)
    at.radio(key="explain_source").set_value("Test images").run(timeout=180)
    assert not at.exception
    picked = at.multiselect(key="explain_pick")
    assert picked.value == picked.options[:2] and picked.value[0].startswith("test image #")  # a new pool, new picks
    at.selectbox(key="explain_test_class").set_value(3).run(timeout=180)
    picked = at.multiselect(key="explain_pick")
    assert len(picked.value) == 2 and all("label 3" in c for c in picked.value)
    picked.set_value(picked.options[:1]).run(timeout=180)
    at.radio(key="explain_target_mode").set_value("true").run(timeout=180)
    assert not at.exception
    captions = [c for img in at.image for c in img.captions]
    assert len(at.image) == 10 + 4, captions  # one image × 2 rows × 5 columns, + its 4 activation maps
    assert all("label 3" in c for c in captions if c.startswith(("test image", "+ trigger")))
    assert not any(c.startswith("clean") for c in captions)
    assert sum(c.startswith("3: p = ") for c in captions) == 4  # the true-label maps


def test_explain_page_uploads_images_and_reports_unreadable_files(kdaudit_home):
    import io

    from PIL import Image

    at = _page(kdaudit_home)
    at.radio(key="explain_source").set_value("Upload images").run(timeout=180)
    assert not at.exception and len(at.image) == 0
    buf = io.BytesIO()
    Image.new("L", (32, 32), 200).save(buf, format="PNG")
    files = [("seven.png", buf.getvalue(), "image/png"), ("broken.png", b"not a png", "image/png")]
    at.file_uploader(key="explain_upload").set_value(files).run(timeout=180)
    assert not at.exception
    assert any("broken.png" in w.value for w in at.warning)
    assert at.multiselect(key="explain_pick").value == ["uploaded image 1 · seven.png"]
    captions = [c for img in at.image for c in img.captions]
    assert len(at.image) == 10 + 4, captions  # the grid and the image's 4 activation maps
    assert "uploaded image" in captions, captions  # no label: the caption says only its kind


def _stats(n: int, triggered: bool = True) -> dict[str, NormStats]:
    rng = np.random.default_rng(0)
    make = lambda shift: NormStats(*(rng.random(n) + shift for _ in NORMS))
    return {"clean": make(0.0), "triggered": make(2.0)} if triggered else {"clean": make(0.0)}


def _bars(svg: str) -> dict[str, int]:
    """condition → images counted in an SVG histogram's bars (their tooltips)."""
    out: dict[str, int] = {}
    for cond, n in re.findall(r"<title>(\w+): (\d+) images, ", svg):
        out[cond] = out.get(cond, 0) + int(n)
    return out


def test_norm_histograms_svg_facets_models_by_norms():
    facets = norm_histograms_svg({"teacher": _stats(50), "student": _stats(50)})
    assert list(facets) == ["teacher", "student"] and all(list(f) == list(NORMS) for f in facets.values())
    for m, row in facets.items():
        for norm, svg in row.items():
            assert _bars(svg) == {"clean": 50, "triggered": 50}  # every image in its facet, both conditions
            assert f"{model_label(m)} · {NORM_LABELS[norm]}" in svg
    # each facet has its own scale: the triggered values (2..3) lie above the clean ones (0..1)
    linf = facets["student"]["linf"]
    lows = [float(x) for x in re.findall(r"<title>triggered: \d+ images, ℓ∞ ([-\d.e]+) to", linf)]
    assert lows and min(lows) >= 1.9


def test_norm_histograms_svg_clean_only_from_dicts_and_a_constant_layer():
    facets = norm_histograms_svg({"teacher": {"clean": _stats(10, triggered=False)["clean"].to_dict()}})
    assert _bars(facets["teacher"]["l1"]) == {"clean": 10}
    dead = norm_histograms_svg({"teacher": {"clean": {n: [0.0] * 5 for n in NORMS}}})  # every value 0
    assert _bars(dead["teacher"]["linf"]) == {"clean": 5}
    with pytest.raises(ValueError):
        norm_histograms_svg({})


def test_activation_map_image_tiles_channels_on_one_colour_scale():
    act = np.arange(32 * 4 * 5, dtype=np.float32).reshape(32, 4, 5)
    img = activation_map_image(act, width=47)  # the grid is 47 px wide: no enlarging
    assert img.shape == (4 * (4 + 1) - 1, 8 * (5 + 1) - 1, 3) and img.dtype == np.uint8  # 4 rows × 8, 1-px gaps
    assert (img[4] == GAP_RGB).all() and (img[:, 5] == GAP_RGB).all()  # the gaps between tiles
    assert (img[0, 0] == VIRIDIS[0]).all() and (img[18, 46] == VIRIDIS[-1]).all()  # 0 and the top value
    tile9 = img[5:9, 6:11]  # row 1, column 1 of the grid is channel 9
    np.testing.assert_array_equal(tile9, VIRIDIS[np.round(act[9] / act.max() * 255).astype(int)])
    dim = activation_map_image(act, zmax=2 * act.max(), width=47)  # a shared, higher scale: no pixel is yellow
    assert not (dim == VIRIDIS[-1]).all(axis=-1).any()
    assert activation_map_image(act[:3], width=34).shape == (8, 34, 3)  # 3 channels → 1 × 3, enlarged ×2
    with pytest.raises(ValueError):
        activation_map_image(np.zeros((0, 2, 2)))


def test_most_driven_channels_are_the_largest_rises():
    clean = np.zeros((4, 2, 2), dtype=np.float32)
    triggered = clean.copy()
    triggered[2, 1, 1], triggered[0, 0, 0], triggered[3] = 5.0, 1.0, -1.0
    assert most_driven_channels(clean, triggered, n=2) == [(2, 0.0, 5.0), (0, 0.0, 1.0)]


def test_explain_measures_the_last_conv_block_where_linf_pruning_does(digits_spec):
    """The page shows relu(output of ACT_ROLE's layer): the conv when a ReLU follows it, the BN
    that consumes it otherwise (resnet18-small: layer4.1.bn2, as ℓ∞ pruning; it used to be the conv)."""
    from torch import nn

    model = build_model(digits_spec)  # paper-cnn
    assert choose_layer(model, digits_spec, ACT_ROLE) == ("features.2", model.features[2])
    vgg_spec = type(digits_spec)("paper-vgg11", 10, (3, 32, 32))
    vgg = build_model(vgg_spec)
    assert choose_layer(vgg, vgg_spec, ACT_ROLE)[1] is vgg.features[-3]  # the last conv, before ReLU and max-pool
    res_spec = type(digits_spec)("resnet18-small", 10, (3, 16, 16))
    res = build_model(res_spec)
    assert choose_layer(res, res_spec, ACT_ROLE) == ("layer4.1.bn2", res.layer4[1].bn2)
    conv_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    assert choose_layer(conv_bn, digits_spec, ACT_ROLE)[1] is conv_bn[1]  # BatchNorm in between: the BN


def test_explain_layer_select_defaults_to_the_runs_choice_and_moves_every_conv_view(kdaudit_home):
    at = _page(kdaudit_home)
    select = at.selectbox(key="explain_layer")
    assert select.value == select.options[-1] and len(select.options) >= 2  # the last conv to run
    first = select.options[0]
    select.set_value(first).run(timeout=180)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(f"`{first}`" in c.value for c in at.caption)  # the activation maps are of the chosen layer
    assert len(at.image) == 20 + 4 and sum(m.value.startswith("<svg") for m in at.markdown) == 6


def test_explain_page_says_why_when_the_model_has_no_conv_layer(kdaudit_home, monkeypatch):
    problem = "TinyMLP has no nn.Conv2d layer: Grad-CAM … need one; Neural Cleanse … still apply"
    report = {"conv": [], "linear": ["head"], "last_conv": None, "conv_activation": None, "penultimate": "head"}
    monkeypatch.setattr("app.explain.teacher_layers", lambda run_dir: {**report, "problems": {"last_conv": problem}})
    at = _page(kdaudit_home)
    assert not at.exception
    assert any(problem in w.value for w in at.warning)
    assert len(at.image) == 0 and not at.get("plotly_chart")
