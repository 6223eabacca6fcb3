"""BCU (seed 003): the layer-wise re-initialisation against binomial and init-bound oracles, the
published ResNet-18 ratios, and the whole method on the backdoored digits model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from kdcore.defenses import BCU, get_defense
from kdcore.defenses.bcu import BCUConfig, layer_ratios, reinit_layers, reinitialise
from kdcore.errors import ConfigError, InputError
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec


def _tiny() -> nn.Module:
    """conv (448 params) → BN → linear (36,928) → BN → linear (650); BN statistics made non-trivial."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 6 * 6, 64),
        nn.BatchNorm1d(64),
        nn.Linear(64, 10),
    )
    with torch.no_grad():
        for bn in (model[1], model[5]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.num_batches_tracked.fill_(7)
    return model


def _bound(layer: nn.Module) -> float:
    return 1.0 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(layer.weight)[0])


def _changed(a: nn.Module, b: nn.Module) -> torch.Tensor:
    return torch.cat([(pa != pb).flatten() for pa, pb in zip(a.parameters(), b.parameters(), strict=True)])


def test_reinitialised_fraction_matches_the_ratio_and_fresh_values_follow_the_default_init():
    model = _tiny()
    ratios = (0.1, 0.3, 0.5)
    student, stats = reinitialise(model, ratios, torch.Generator().manual_seed(0))
    assert [s["layer"] for s in stats] == ["0", "4", "6"] and [s["n_weights"] for s in stats] == [448, 36928, 650]
    for (_, old), (_, new), s, p in zip(reinit_layers(model), reinit_layers(student), stats, ratios, strict=True):
        n = s["n_weights"]
        assert abs(s["n_reinitialised"] - n * p) <= 4 * math.sqrt(n * p * (1 - p))  # binomial, 4 σ
        assert s["fraction"] == s["n_reinitialised"] / n and s["ratio"] == p
        changed = _changed(old, new)
        assert int(changed.sum()) == s["n_reinitialised"]  # every drawn element really changed, nothing else
        fresh = torch.cat([q.flatten() for q in new.parameters()])[changed]
        assert fresh.abs().max() <= _bound(old)  # U(±1/√fan_in), PyTorch's default layer init


def test_batchnorm_is_copied_untouched():
    model = _tiny()
    student, _ = reinitialise(model, (1.0, 1.0, 1.0), torch.Generator().manual_seed(0))
    for i in (1, 5):
        for key, value in model[i].state_dict().items():
            assert torch.equal(student[i].state_dict()[key], value), key


def test_ratio_zero_keeps_weights_and_ratio_one_replaces_all():
    model = _tiny()
    same, stats0 = reinitialise(model, (0.0, 0.0, 0.0), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values(), strict=True))
    assert [s["n_reinitialised"] for s in stats0] == [0, 0, 0]
    new, stats1 = reinitialise(model, (1.0, 1.0, 1.0), torch.Generator().manual_seed(0))
    assert [s["fraction"] for s in stats1] == [1.0, 1.0, 1.0]
    for (_, old), (_, fresh) in zip(reinit_layers(model), reinit_layers(new), strict=True):
        assert bool(_changed(old, fresh).all())
        assert max(p.abs().max() for p in fresh.parameters()) <= _bound(old)


def test_input_model_is_not_modified_and_the_draw_is_seeded():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, _ = reinitialise(model, (0.5, 0.5, 0.5), torch.Generator().manual_seed(3))
    b, _ = reinitialise(model, (0.5, 0.5, 0.5), torch.Generator().manual_seed(3))
    c, _ = reinitialise(model, (0.5, 0.5, 0.5), torch.Generator().manual_seed(4))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a[4].weight, c[4].weight)


@pytest.mark.parametrize("arch", ["resnet18-small", "tv:resnet18"])
def test_resnet18_gets_the_published_ratios(arch):
    model = build_model(ModelSpec(arch, 10, (3, 32, 32)))
    ratios, rule = layer_ratios(model, BCUConfig())
    names = [n for n, _ in reinit_layers(model)]
    assert rule == "resnet18-published" and len(names) == 21  # stem, 16 block convs, 3 shortcuts, FC
    by_name = dict(zip(names, ratios, strict=True))
    assert by_name["conv1"] == 0.01 and by_name[names[-1]] == 0.1 and names[-1] in ("linear", "fc")
    blocks = [[r for n, r in by_name.items() if n.startswith(f"layer{x}.{y}.")] for x in range(1, 5) for y in (0, 1)]
    assert [set(b) for b in blocks] == [{p} for p in (0.01, 0.01, 0.03, 0.03, 0.09, 0.09, 0.27, 0.27)]
    # Same as the official code's per-stage list: conv1, layer1..4, fc = 0.01 0.01 0.03 0.09 0.27 0.10.
    stage = {n.split(".")[0]: r for n, r in by_name.items()}
    assert [stage[k] for k in ("conv1", "layer1", "layer2", "layer3", "layer4", names[-1])] == [
        0.01,
        0.01,
        0.03,
        0.09,
        0.27,
        0.1,
    ]


def test_other_architectures_get_a_geometric_depth_schedule(digits_spec):
    model = build_model(digits_spec)  # paper-cnn: conv, conv, linear, linear (classifier)
    ratios, rule = layer_ratios(model, BCUConfig())
    assert rule == "depth-geometric"
    assert ratios == pytest.approx([0.01, 0.01 * 27**0.5, 0.27, 0.1])
    assert layer_ratios(model, BCUConfig(schedule="uniform", uniform_ratio=0.2)) == ([0.2] * 4, "uniform")
    assert layer_ratios(model, BCUConfig(ratios=(0.0, 0.1, 0.2, 0.3))) == ([0.0, 0.1, 0.2, 0.3], "explicit")
    with pytest.raises(ConfigError, match="4 layers"):
        layer_ratios(model, BCUConfig(ratios=(0.1, 0.2)))


@pytest.mark.parametrize(
    "bad",
    [
        {"schedule": "decreasing"},
        {"uniform_ratio": 1.5},
        {"ratios": [0.1, -0.1]},
        {"labels": "pseudo"},
        {"temperature": 0.5},
        {"epochs": 0},
        {"optimizer": "rmsprop"},
        {"holdout_fraction": 0.5},
        {"unknown_key": 1},
    ],
)
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        BCU.from_params(bad)


def test_registered_and_needs_unlabelled_images(digits_backdoor):
    assert get_defense("bcu") is BCU and BCU.needs == ("unlabeled",) and BCU.family == "repairer"
    with pytest.raises(InputError, match="unlabelled"):
        BCU().run(digits_backdoor(unlabeled=None))


@pytest.mark.parametrize("labels", ["soft", "hard"])
def test_bcu_removes_the_digits_backdoor_and_keeps_clean_accuracy(digits_backdoor, labels):
    inputs = digits_backdoor()
    before = {k: v.clone() for k, v in inputs.model.state_dict().items()}
    result = BCU(BCUConfig(labels=labels)).run(inputs)
    s, r = result.suspect, result.repaired
    assert s.asr > 0.9 and s.clean_acc > 0.95
    # Measured over seeds 0–3: asr 0.05–0.13, clean_acc −0.00 to −0.02; the margins leave room.
    assert r.asr < 0.3 and r.clean_acc >= s.clean_acc - 0.05
    assert all(torch.equal(v, inputs.model.state_dict()[k]) for k, v in before.items())
    ev = json.loads(json.dumps(result.report()))["evidence"]
    assert ev["labels"] == labels and ev["n_unlabeled"] == 500 and ev["ratio_rule"] == "depth-geometric"
    assert [row["layer"] for row in ev["layers"]] == ["features.0", "features.2", "classifier.1", "classifier.3"]
    kd = ev["distill"]
    assert kd["n_images"] + kd["n_holdout"] == 500 and 1 <= kd["best_epoch"] <= len(kd["history"]) == 10
    assert kd["holdout_agreement"] == max(h["holdout_agreement"] for h in kd["history"])
    assert [h.get("temperature") for h in kd["history"]][-1] == (4.0 if labels == "soft" else None)
