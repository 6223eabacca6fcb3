"""ℓ∞ pruning (seed 004, §5) on the backdoored digits model: the mask against an `amax` oracle, the
sweep's shape and selection rule, and the repaired model as plain, reloadable weights."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from kdcore.defenses import LinfPruning
from kdcore.defenses.linf_pruning import LinfPruningConfig
from kdcore.errors import ConfigError
from kdcore.explain import activations
from kdcore.models.loading import load_model, save_model
from kdcore.train import predict_logits


def _oracle_scores(inputs) -> np.ndarray:
    """max over images and (h, w) of relu(last conv), from the full activation tensor: (C,)."""
    acts = activations(inputs.model, inputs.spec, inputs.unlabeled.images)  # (N, 32, 4, 4)
    return acts.clamp_min(0).amax(dim=(0, 2, 3)).double().numpy()


def _logits(model, inputs) -> torch.Tensor:
    return predict_logits(model, inputs.spec, inputs.unlabeled.images, inputs.device)


def test_mask_removes_exactly_the_channels_above_the_threshold(digits_backdoor):
    inputs = digits_backdoor()
    scores = _oracle_scores(inputs)
    t = float(np.median(scores))
    cfg = LinfPruningConfig(thresholds=(t,), max_agreement_drop=0.99, stop_agreement=0.0)
    result = LinfPruning(cfg).run(inputs)
    expected = sorted(np.flatnonzero(scores > t).tolist())
    ev = result.evidence
    assert np.allclose(ev["channel_scores"], scores, rtol=1e-6)
    assert ev["chosen_threshold"] == t and ev["pruned_channels"] == expected and 10 <= len(expected) <= 22
    assert ev["sweep"][0]["n_pruned"] == 0 and ev["sweep"][1]["n_pruned"] == len(expected)  # clean max first
    out = activations(result.model, inputs.spec, inputs.unlabeled.images).clamp_min(0)  # (N, 32, 4, 4)
    before = activations(inputs.model, inputs.spec, inputs.unlabeled.images).clamp_min(0)
    kept = [c for c in range(32) if c not in expected]
    assert torch.equal(out[:, expected], torch.zeros_like(out[:, expected]))
    assert torch.equal(out[:, kept], before[:, kept])


def test_quantile_score_is_the_quantile_over_images(digits_backdoor):
    inputs = digits_backdoor()
    per_image = activations(inputs.model, inputs.spec, inputs.unlabeled.images).clamp_min(0).amax(dim=(2, 3))
    result = LinfPruning(LinfPruningConfig(quantile=0.9, steps=2)).run(inputs)
    assert np.allclose(result.evidence["channel_scores"], np.quantile(per_image.double().numpy(), 0.9, axis=0))


def test_threshold_at_the_clean_max_prunes_nothing(digits_backdoor):
    inputs = digits_backdoor()
    top = float(_oracle_scores(inputs).max())
    result = LinfPruning(LinfPruningConfig(thresholds=(top + 1.0, top))).run(inputs)
    ev = result.evidence
    assert [r["n_pruned"] for r in ev["sweep"]] == [0, 0] and ev["pruned_channels"] == []
    assert ev["clean_max"] == pytest.approx(top)
    assert torch.equal(_logits(result.model, inputs), _logits(inputs.model, inputs))
    assert result.repaired.metrics() == result.suspect.metrics()


def test_sweep_is_monotone_and_the_choice_follows_agreement(digits_backdoor):
    inputs = digits_backdoor()
    cfg = LinfPruningConfig(steps=12)
    ev = LinfPruning(cfg).run(inputs).evidence
    sweep = ev["sweep"]
    json.dumps(ev)  # JSON-ready
    assert 2 <= len(sweep) <= 12
    assert all(a["threshold"] > b["threshold"] for a, b in itertools.pairwise(sweep))
    assert all(a["n_pruned"] <= b["n_pruned"] for a, b in itertools.pairwise(sweep))
    assert sweep[0]["n_pruned"] == 0 and sweep[0]["agreement"] == 1.0
    assert sweep[-1]["n_pruned"] > 0
    assert all(row["clean_acc"] is not None and row["asr"] is not None for row in sweep)
    floor = 1 - cfg.max_agreement_drop
    chosen = next(i for i, r in enumerate(sweep) if r["threshold"] == ev["chosen_threshold"])
    assert all(r["agreement"] >= floor for r in sweep[: chosen + 1])
    assert chosen == len(sweep) - 1 or sweep[chosen + 1]["agreement"] < floor
    assert ev["n_pruned"] == sweep[chosen]["n_pruned"] == len(ev["pruned_channels"])
    # the acceptance: asr falls as the threshold falls (here to near zero, well before the end)
    assert sweep[0]["asr"] > 0.9 and min(r["asr"] for r in sweep) < 0.5


def test_input_model_unchanged_and_repaired_model_reloads(digits_backdoor, tmp_path):
    inputs = digits_backdoor()
    result = LinfPruning(LinfPruningConfig(max_agreement_drop=0.1)).run(inputs)
    assert result.evidence["n_pruned"] > 0
    for k, v in inputs.model.state_dict().items():
        assert torch.equal(v, digits_backdoor.state[k]), k
    path = save_model(result.model, inputs.spec, tmp_path / "repaired.safetensors")
    reloaded, spec = load_model(path)
    assert spec == inputs.spec
    assert torch.equal(_logits(reloaded, inputs), _logits(result.model, inputs))
    assert not torch.equal(_logits(reloaded, inputs), _logits(inputs.model, inputs))


def test_without_a_test_set_the_sweep_still_chooses(digits_backdoor):
    inputs = digits_backdoor(test=None, trigger=None)
    result = LinfPruning(LinfPruningConfig(steps=4)).run(inputs)
    assert all(r["clean_acc"] is None and r["asr"] is None for r in result.evidence["sweep"])
    assert result.repaired is None and result.evidence["chosen_agreement"] >= 0.97


@pytest.mark.parametrize(
    "params",
    [
        {"steps": 1},
        {"lowest": 1.0},
        {"thresholds": [1.0, -0.5]},
        {"thresholds": [float("nan")]},
        {"quantile": 0.0},
        {"max_agreement_drop": 1.0},
        {"stop_agreement": 0.99},
        {"batch_size": 0},
        {"threshold": 1.0},
    ],
)
def test_bad_settings_raise(params):
    with pytest.raises(ConfigError):
        LinfPruning.from_params(params)


def test_a_layer_that_is_not_a_conv_raises(digits_backdoor):
    with pytest.raises(ConfigError, match=r"nn\.Conv2d"):
        LinfPruning(LinfPruningConfig(layer="classifier.1")).run(digits_backdoor())
