"""Fine-pruning (Liu et al. 2018) on the backdoored digits model: pruning order against a mean-activation
oracle, the stop rule, masks that survive fine-tuning, and the repair itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdcore.defenses import FinePruning
from kdcore.defenses.channels import channel_layer, masked_channels
from kdcore.defenses.fine_pruning import FinePruningConfig
from kdcore.errors import ConfigError, InputError
from kdcore.explain import activations
from kdcore.models.loading import load_model, save_model
from kdcore.train import TrainConfig, predict_logits

NO_FINETUNE = TrainConfig(epochs=0)


def test_prunes_in_increasing_order_of_mean_activation(digits_backdoor):
    inputs = digits_backdoor()
    method = FinePruning(FinePruningConfig(finetune=NO_FINETUNE, max_acc_drop=0.1))
    tune, held = method.split(inputs)
    assert len(tune) == 400 and len(held) == 100
    acts = activations(inputs.model, inputs.spec, tune.images).clamp_min(0)  # (400, 32, 4, 4)
    means = acts.double().mean(dim=(0, 2, 3)).numpy()
    order = np.argsort(means, kind="stable").tolist()
    ev = method.run(inputs).evidence
    n = ev["n_pruned"]
    assert np.allclose(ev["mean_activation"], means)
    assert 5 <= n <= int(0.9 * 32) and ev["pruned_channels"] == order[:n]
    assert ev["prune_fraction"] == n / 32


def test_stop_rule_keeps_heldout_accuracy_within_the_tolerance(digits_backdoor):
    inputs = digits_backdoor()
    cfg = FinePruningConfig(finetune=NO_FINETUNE, max_acc_drop=0.03, max_prune_fraction=0.8, channels_per_step=2)
    result = FinePruning(cfg).run(inputs)
    ev = result.evidence
    curve, n, base = ev["prune_curve"], ev["n_pruned"], ev["heldout_acc_before"]
    json.dumps(ev)
    assert curve[0] == {"n_pruned": 0, "fraction": 0.0, "heldout_acc": base}
    assert [c["n_pruned"] for c in curve] == list(range(0, 2 * len(curve), 2))[: len(curve)]
    kept = [c for c in curve if c["n_pruned"] <= n]
    assert all(c["heldout_acc"] >= base - 0.03 for c in kept)
    assert n == int(0.8 * 32) or curve[len(kept)]["heldout_acc"] < base - 0.03  # stopped by the rule
    assert ev["heldout_acc_pruned"] == kept[-1]["heldout_acc"]  # no fine-tuning: the pruned model is returned
    assert masked_channels(channel_layer(result.model, inputs.spec)) == sorted(ev["pruned_channels"])


def test_pruned_channels_stay_zero_after_finetuning_and_backdoor_weakens(digits_backdoor, tmp_path):
    inputs = digits_backdoor()
    result = FinePruning().run(inputs)
    ev = result.evidence
    pruned = ev["pruned_channels"]
    assert len(pruned) >= 5 and ev["finetune"]["epochs"] == 10
    assert ev["finetune"]["last_loss"] < ev["finetune"]["first_loss"]
    layer = channel_layer(result.model, inputs.spec)
    assert masked_channels(layer) == sorted(pruned)
    out = activations(result.model, inputs.spec, inputs.unlabeled.images).clamp_min(0)
    assert torch.equal(out[:, pruned], torch.zeros_like(out[:, pruned]))
    # fine-tuning moved the other weights; no gradient hook is left on the returned model
    kept = [c for c in range(32) if c not in pruned]
    assert not torch.equal(layer.conv.weight[kept], inputs.model.features[2].weight[kept])
    result.model.zero_grad()
    x = inputs.spec.normalize(inputs.unlabeled.images[:16])
    torch.nn.functional.cross_entropy(result.model(x), torch.zeros(16, dtype=torch.long)).backward()
    assert layer.conv.weight.grad[kept].abs().sum() > 0
    # the repair (digits_backdoor: clean_acc 0.973, asr 0.98; seeds 0–2 give asr 0.48–0.66)
    assert result.repaired.clean_acc >= result.suspect.clean_acc - 0.03
    assert result.repaired.asr <= result.suspect.asr - 0.2
    # the input model is untouched; the repaired one is plain weights that reload identically
    for k, v in inputs.model.state_dict().items():
        assert torch.equal(v, digits_backdoor.state[k]), k
    reloaded, _ = load_model(save_model(result.model, inputs.spec, tmp_path / "fp.safetensors"))
    images = inputs.unlabeled.images
    assert torch.equal(
        predict_logits(reloaded, inputs.spec, images, inputs.device),
        predict_logits(result.model, inputs.spec, images, inputs.device),
    )


def test_needs_labelled_clean_images(digits_backdoor):
    inputs = digits_backdoor()
    with pytest.raises(InputError, match="labelled clean images"):
        FinePruning().run(digits_backdoor(clean_labeled=None))
    with pytest.raises(InputError, match="no labels"):
        FinePruning().run(digits_backdoor(clean_labeled=inputs.clean_labeled.unlabeled()))
    with pytest.raises(InputError, match="hold out"):
        FinePruning().run(digits_backdoor(clean_labeled=inputs.clean_labeled.subset([0, 1])))


@pytest.mark.parametrize(
    "params",
    [
        {"holdout_fraction": 0.0},
        {"holdout_fraction": 0.6},
        {"max_acc_drop": -0.1},
        {"max_prune_fraction": 1.0},
        {"channels_per_step": 0},
        {"finetune": {"lr": 0.0}},
        {"finetune": {"epoch": 3}},
        {"finetune": 5},
        {"batch_size": 0},
        {"prune_fraction": 0.5},
    ],
)
def test_bad_settings_raise(params):
    with pytest.raises(ConfigError):
        FinePruning.from_params(params)
