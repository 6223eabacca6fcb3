"""NAD (Li et al. 2021): the attention map and AT loss against hand-written formulas, the layer
choice, the repair on the backdoored digits model (hooks gone, input untouched, backdoor weaker),
and the error paths."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdcore.defenses import NAD, get_defense
from kdcore.defenses.nad import NADConfig, at_loss, attention_layers, attention_map
from kdcore.errors import ConfigError, InputError
from kdcore.models.loading import load_model, save_model
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.train import predict_logits

FAST = NADConfig(teacher_epochs=2, epochs=3)


def test_attention_map_matches_the_formula():
    a = torch.tensor(
        [
            [[[1.0, -2.0], [0.0, 3.0]], [[-1.0, 1.0], [2.0, 0.0]]],  # sample 0: C = 2, H = W = 2
            [[[0.5, 0.5], [0.5, 0.5]], [[0.0, 0.0], [0.0, -1.0]]],
        ]
    )
    for p in (2.0, 1.0, 3.0):
        want = []
        for b in range(2):
            am = [sum(abs(a[b, c, h, w].item()) ** p for c in range(2)) / 2 for h in range(2) for w in range(2)]
            norm = math.sqrt(sum(v * v for v in am))
            want.append([v / norm for v in am])
        assert torch.allclose(attention_map(a, p), torch.tensor(want), atol=1e-6)
    with pytest.raises(ValueError, match="B, C, H, W"):
        attention_map(torch.ones(2, 3))


def test_at_loss_is_zero_for_equal_attention_positive_otherwise_and_differentiable():
    g = torch.Generator().manual_seed(0)
    a_t = torch.randn(4, 8, 5, 5, generator=g)
    assert at_loss(a_t.clone(), a_t).item() < 1e-5
    assert at_loss(3.0 * a_t, -a_t).item() < 1e-5  # |a|^p is sign-blind and the map is normalised
    a_s = torch.randn(4, 8, 5, 5, generator=g, requires_grad=True)
    loss = at_loss(a_s, a_t)
    want = (attention_map(a_s.detach()) - attention_map(a_t)).norm(dim=1).mean()
    assert loss.item() > 0.01 and loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(a_s.grad).all() and a_s.grad.abs().sum() > 0
    same = a_t.clone().requires_grad_(True)
    at_loss(same, a_t).backward()
    assert torch.isfinite(same.grad).all()


def test_attention_layers_are_the_deepest_stage_outputs():
    cpu = torch.device("cpu")
    cnn = ModelSpec("paper-cnn", 10, (1, 8, 8))
    assert attention_layers(build_model(cnn), cnn, cpu) == ["features.1", "features.3"]  # the ReLUs after each conv
    assert attention_layers(build_model(cnn), cnn, cpu, n_layers=1) == ["features.3"]
    res = ModelSpec("resnet18-small", 10, (3, 16, 16))
    assert attention_layers(build_model(res), res, cpu) == ["layer2.1", "layer3.1", "layer4.1"]  # the group outputs
    vgg = ModelSpec("paper-vgg11", 10, (3, 32, 32))  # its last stage is 1×1 and is skipped
    assert attention_layers(build_model(vgg), vgg, cpu) == ["features.9", "features.14", "features.19"]


def test_repair_weakens_the_backdoor_and_leaves_plain_models(digits_backdoor, tmp_path):
    inputs = digits_backdoor()
    seen: dict[str, list] = {}
    inputs.on_progress = lambda stage, step, total, m: seen.setdefault(stage, []).append((step, total))
    result = NAD().run(inputs)
    # digits_backdoor: clean_acc 0.973, asr 0.98; with the defaults seeds 0–2 give asr 0.14–0.21, clean ≥ 0.966
    assert result.repaired.asr <= result.suspect.asr - 0.5
    assert result.repaired.clean_acc >= result.suspect.clean_acc - 0.03
    ev = result.evidence
    json.dumps(ev)
    assert ev["layers"] == ["features.1", "features.3"] and ev["betas"] == [5.0, 5.0] and ev["n_clean_labeled"] == 500
    assert len(ev["teacher_finetune"]["epochs"]) == 5 and len(ev["nad_history"]) == 10
    first, last = ev["nad_history"][0], ev["nad_history"][-1]
    assert last["ce"] < first["ce"] and set(last["at"]) == {"features.1", "features.3"}
    assert seen["nad: teacher fine-tuning"][-1] == (40, 40) and seen["nad"][-1] == (80, 80)
    # no hook is left on either model; the input model is untouched
    for model in (result.model, inputs.model):
        assert not any(m._forward_hooks for m in model.modules())
    for k, v in inputs.model.state_dict().items():
        assert torch.equal(v, digits_backdoor.state[k]), k
    reloaded, _ = load_model(save_model(result.model, inputs.spec, tmp_path / "nad.safetensors"))
    images = inputs.unlabeled.images
    assert torch.equal(
        predict_logits(reloaded, inputs.spec, images, inputs.device),
        predict_logits(result.model, inputs.spec, images, inputs.device),
    )


def test_attention_term_keeps_the_student_close_to_the_teacher(digits_backdoor):
    def final_at(beta):
        ev = NAD(NADConfig(betas=(beta,))).run(digits_backdoor()).evidence
        return sum(ev["nad_history"][-1]["at"].values())

    # seeds 0–2: 0.011–0.014 with the default β = 5 against 0.14–0.20 for plain fine-tuning (β = 0)
    assert final_at(5.0) < 0.25 * final_at(0.0)


def test_explicit_layers_and_per_layer_betas(digits_backdoor):
    cfg = NADConfig(teacher_epochs=0, epochs=1, layers=("features.2",), betas=(3.0,))
    ev = NAD(cfg).run(digits_backdoor()).evidence
    assert ev["layers"] == ["features.2"] and ev["betas"] == [3.0] and ev["teacher_finetune"] == {"epochs": []}
    with pytest.raises(ConfigError, match="2 layers"):
        NAD(NADConfig(teacher_epochs=0, epochs=1, betas=(1.0, 2.0, 3.0))).run(digits_backdoor())
    with pytest.raises(ConfigError, match="not modules"):
        NAD(NADConfig(teacher_epochs=0, epochs=1, layers=("features.9",))).run(digits_backdoor())


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0},
        {"teacher_epochs": -1},
        {"lr": 0.0},
        {"batch_size": 0},
        {"optimizer": "rmsprop"},
        {"p": 0.0},
        {"betas": []},
        {"betas": [-1.0]},
        {"n_layers": 0},
        {"layers": [""]},
        {"beta": 5000},
    ],
)
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        NAD.from_params(bad)


def test_needs_labelled_clean_images(digits_backdoor):
    assert get_defense("nad") is NAD and NAD.needs == ("clean_labeled",) and NAD.needs_labels
    with pytest.raises(InputError, match="labelled clean images"):
        NAD(FAST).run(digits_backdoor(clean_labeled=None))
    unlabelled = digits_backdoor().unlabeled
    with pytest.raises(InputError, match="no labels"):
        NAD(FAST).run(digits_backdoor(clean_labeled=unlabelled))
