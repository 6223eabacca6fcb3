"""New audit's trigger section with a trigger as attack toolkits give it: a pattern as large as the
input, zero except the patch, and a mask of the same size. Without x/y it is put at the origin: no 🚫,
a preview, and a config whose trigger stamps the patch where the pattern has it."""

from __future__ import annotations

import numpy as np
import torch

from app.trigger_form import FULL_SIZE
from kdcore.models.loading import save_model
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.triggers import Patch, Trigger
from tests.app.conftest import open_page
from tests.app.test_new_audit_models import _submit, _upload
from tests.app.test_trigger_form import png


def test_a_full_size_pattern_and_mask_need_no_x_y(empty_home, submitted):
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28))
    at = open_page("new_audit")
    _upload(
        at,
        "model_file",
        "cnn.safetensors",
        save_model(build_model(spec), spec, empty_home / "m.safetensors").read_bytes(),
    )
    at.toggle(key="know_trigger").set_value(True).run(timeout=60)
    at.selectbox(key="trigger_kind").set_value("patch").run(timeout=60)
    pattern, mask = np.zeros((28, 28)), np.zeros((28, 28))
    pattern[20:23, 23:26], mask[20:23, 23:26] = 200, 255
    _upload(at, "trigger_patch_image", "trigger_pattern.png", png(pattern, "L"))
    _upload(at, "trigger_patch_mask", "trigger_mask.png", png(mask, "L"))
    assert at.radio(key="trigger_patch_where").value == "a corner"  # location and margin as they come
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "+ trigger → class 0" in [c for img in at.image for c in img.captions]
    assert FULL_SIZE in [c.value for c in at.caption]
    t = _submit(at, submitted)["trigger"]
    assert t["kind"] == "patch" and t["x"] is None and t["image"].endswith(".png") and t["mask"].endswith(".png")
    trig = Trigger.from_dict(t)
    assert isinstance(trig, Patch)
    x = torch.full((1, 1, 28, 28), 100, dtype=torch.uint8)
    want = torch.from_numpy(np.where(mask == 255, pattern, 100).astype(np.uint8))
    assert torch.equal(trig.stamp(x)[0, 0], want)
