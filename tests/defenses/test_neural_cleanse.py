"""Neural Cleanse: the MAD anomaly index by hand, the stamping formula, and the backdoor target
found on the digits teacher (BadNets 2×2 bottom-right → 7)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from kdcore.defenses import get_defense
from kdcore.defenses.neural_cleanse import NeuralCleanse, NeuralCleanseConfig, mad_anomaly_index
from kdcore.errors import ConfigError, InputError
from kdcore.triggers import BadNets
from kdcore.triggers.recovered import apply_recovered

# Short optimisation for 8×8 digits: 150 steps of 32 images × 10 classes (a few seconds).
FAST = NeuralCleanseConfig(n_images=200, n_holdout=150, steps=150)


def test_mad_anomaly_index_by_hand():
    # median 10; |x − 10| = [0, 0, 1, 1, 0, 8] → MAD = median [0, 0, 0, 1, 1, 8] = 0.5
    index = mad_anomaly_index(torch.tensor([10.0, 10, 11, 9, 10, 2]))
    expected = torch.tensor([0, 0, 1, 1, 0, 8], dtype=torch.float64) / (1.4826 * 0.5)
    torch.testing.assert_close(index, expected)
    assert index[5].item() == pytest.approx(10.7918, abs=1e-4)


def test_mad_all_equal_gives_zero_not_nan():
    index = mad_anomaly_index(torch.full((7,), 3.5))
    assert torch.equal(index, torch.zeros(7, dtype=torch.float64))


def test_mad_zero_falls_back_to_mean_absolute_deviation():
    # median 10, MAD 0 (four of five equal) → scale 1.253314 · mean |x − 10| = 1.253314 · 1.6
    index = mad_anomaly_index([10.0, 10, 10, 10, 2])
    assert torch.isfinite(index).all()
    assert index[4].item() == pytest.approx(8 / (1.253314 * 1.6))
    assert index[:4].abs().max().item() == 0


def test_mad_needs_values():
    with pytest.raises(InputError):
        mad_anomaly_index(torch.tensor([]))


def test_apply_recovered_matches_badnets_and_blends():
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    mask = torch.zeros(8, 8)
    mask[6:, 6:] = 1
    pattern = torch.full((1, 8, 8), 255.0)
    assert torch.equal(apply_recovered(x, mask, pattern), BadNets(target=7, size=2, margin=0).stamp(x))
    assert torch.equal(apply_recovered(x, torch.zeros(8, 8), pattern), x)
    half = apply_recovered(x, torch.full((1, 8, 8), 0.5), torch.zeros(1, 8, 8))
    assert torch.equal(half, (x.float() * 0.5).round().to(torch.uint8))
    with pytest.raises(InputError):
        apply_recovered(x.float(), mask, pattern)


def test_finds_the_backdoor_target_on_digits(digits_backdoor):
    inputs = digits_backdoor()
    model = inputs.model
    model.features[0].weight.requires_grad_(False)  # a mixed pattern, to see that it is left alone
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = NeuralCleanse(FAST).run(inputs)
    ev = result.evidence
    l1 = torch.tensor([row["l1"] for row in ev["classes"]])
    index = torch.tensor([row["anomaly_index"] for row in ev["classes"]])

    assert ev["flagged"] == [7]
    assert ev["most_anomalous"]["class"] == 7 and int(l1.argmin()) == 7
    assert index[7] > ev["threshold"] == 2.0
    torch.testing.assert_close(index, mad_anomaly_index(l1).float(), atol=2e-3, rtol=1e-3)
    assert ev["classes"][7]["recovered_trigger_success"] > 0.9
    assert l1[7] < 8  # the real trigger is a 2×2 patch (ℓ1 = 4); a clean class needs more
    assert ev["n_optimised"] == 200 and ev["n_holdout"] == 150
    json.dumps(result.report(), allow_nan=False)

    for c in range(10):
        assert result.images[f"mask_{c}"].shape == (1, 8, 8)
        assert result.images[f"pattern_{c}"].shape == (1, 8, 8)
        assert result.images[f"trigger_{c}"].dtype == torch.uint8
    assert result.images["stamped_example"].shape == (1, 8, 8)
    # the recovered trigger, stamped, flips held-out clean images to 7 like the real one
    m = result.images["mask_7"].float()[0] / 255
    p = result.images["pattern_7"].float()
    clean = inputs.test.images[inputs.test.labels != 7][:100]
    pred = model(inputs.spec.normalize(apply_recovered(clean, m, p))).argmax(1)
    assert (pred == 7).float().mean() > 0.8

    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_small_pool_is_split_and_seeded(digits_backdoor):
    cfg = NeuralCleanseConfig(n_images=300, n_holdout=200, steps=4, round_steps=2)
    pool = digits_backdoor().unlabeled.subset(list(range(10)))
    a = NeuralCleanse(cfg).run(digits_backdoor(unlabeled=pool))
    b = NeuralCleanse(cfg).run(digits_backdoor(unlabeled=pool))
    assert (a.evidence["n_optimised"], a.evidence["n_holdout"]) == (6, 4)
    assert a.evidence["classes"] == b.evidence["classes"]  # same seed, same result
    with pytest.raises(InputError):
        NeuralCleanse(cfg).run(digits_backdoor(unlabeled=pool.subset([0])))


def test_registered():
    cls = get_defense("neural-cleanse")
    assert cls is NeuralCleanse and cls.family == "inspector" and cls.needs == ("unlabeled",)


@pytest.mark.parametrize(
    "bad",
    [
        {"steps": 0},
        {"n_images": 2.5},
        {"batch_size": True},
        {"round_steps": 20, "steps": 10},
        {"lr": 0},
        {"init_cost": -1e-3},
        {"threshold": float("nan")},
        {"cost_multiplier": 1.0},
        {"success_threshold": 1.5},
        {"classes_per_pass": 0},
        {"early_stop_patience": -1},
        {"early_stop_patience": 1.5},
        {"early_stop_delta": 1.0},
        {"mask_size": 3},
    ],
)
def test_bad_settings(bad):
    with pytest.raises(ConfigError):
        NeuralCleanse.from_params(bad)


def _found(result) -> tuple[list[int], int, list[float], list[int]]:
    ev = result.evidence
    rows = ev["classes"]
    return ev["flagged"], ev["most_anomalous"]["class"], [r["l1"] for r in rows], [r["steps"] for r in rows]


def test_batched_with_early_stop_finds_what_the_per_class_loop_finds(digits_backdoor):
    # The default (every class in one batch, early stop) against the authors' loop: one class after
    # another, every step. 300 steps: long enough for most classes to stop early on digits.
    batched = replace(FAST, steps=300)
    per_class = replace(batched, classes_per_pass=1, early_stop_patience=0)
    flagged_b, top_b, l1_b, steps_b = _found(NeuralCleanse(batched).run(digits_backdoor()))
    flagged_p, top_p, l1_p, steps_p = _found(NeuralCleanse(per_class).run(digits_backdoor()))
    assert flagged_b == flagged_p == [7]
    assert top_b == top_p == 7
    assert l1_b[7] < 8 and l1_p[7] < 8  # the 2×2 trigger (ℓ1 4), found both ways
    assert steps_p == [300] * 10
    assert sum(steps_b) < sum(steps_p)  # the batched run did less work


def test_early_stop_stops_converged_classes_and_leaves_the_others_alone(digits_backdoor):
    cfg = replace(FAST, steps=400)
    reports = []
    stopping = NeuralCleanse(cfg).run(digits_backdoor(on_progress=lambda *a: reports.append(a)))
    _, _, l1, steps = _found(stopping)
    rows = stopping.evidence["classes"]
    stopped = [c for c in range(10) if steps[c] < cfg.steps]
    assert len(stopped) >= 5, steps  # on digits most classes converge well within 400 steps
    for c in stopped:  # a class stops at the end of a round, and only once it has a trigger
        assert steps[c] % cfg.round_steps == 0 and rows[c]["reached_success_threshold"]
    assert reports[-1][1:3] == (400, 400)  # the progress bar ends full though the steps ran out early
    assert reports[-1][3]["classes_running"] == 0 and reports[-1][3]["stopped_at_step"] == max(steps)

    # The classes are independent: the class that ran longest, optimised beside every class for
    # just as many steps with no early stop, ends with the same mask (the others left the batch).
    last = max(range(10), key=lambda c: steps[c])
    full = NeuralCleanse(replace(cfg, steps=steps[last], early_stop_patience=0)).run(digits_backdoor())
    _, _, l1_full, steps_full = _found(full)
    assert steps_full == [steps[last]] * 10
    assert l1_full[last] == pytest.approx(l1[last], abs=1e-3)
    torch.testing.assert_close(full.images[f"mask_{last}"], stopping.images[f"mask_{last}"], atol=1, rtol=0)
