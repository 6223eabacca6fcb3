"""The one training loop (kdcore.loop): each loss object against a hand-written formula, the
best-epoch selector's tie and patience rules, the epoch's bookkeeping and one epoch learning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdcore.defenses.nad import AttentionDistillationLoss, at_loss
from kdcore.distill import HardLabelKD, SoftTargetKL, kd_batches, random_shift
from kdcore.errors import ConfigError
from kdcore.loop import Batch, BestEpoch, CrossEntropy, Loss, epoch_progress, train_one_epoch
from kdcore.models.spec import ModelSpec
from kdcore.train import batches, labelled_batches, make_optimizer

CPU = torch.device("cpu")


def _logits(seed: int, b: int = 6, k: int = 5) -> torch.Tensor:
    return torch.randn(b, k, generator=torch.Generator().manual_seed(seed)) * 3


def _log_softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def test_cross_entropy_matches_mean_negative_log_likelihood_and_counts_correct():
    s, y = _logits(0), torch.tensor([0, 1, 2, 3, 4, 0])
    loss, sums = CrossEntropy()(s, Batch(torch.zeros(6, 1), y))
    want = -sum(_log_softmax_row(s[i].tolist())[int(y[i])] for i in range(6)) / 6
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert sums.dtype == torch.float64 and sums.tolist() == [float((s.argmax(1) == y).sum())]


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_soft_target_kl_is_t2_kl_and_plain_kl_without_t2(temperature):
    s, t = _logits(1), _logits(2)
    b = len(s)
    kl = 0.0
    for i in range(b):
        log_ps = _log_softmax_row((s[i] / temperature).tolist())
        log_pt = _log_softmax_row((t[i] / temperature).tolist())
        kl += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps, strict=True))
    kl /= b  # Σ p_t (log p_t − log p_s) / B
    batch = Batch(torch.zeros(b, 1), t)
    loss, sums = SoftTargetKL(temperature)(s, batch)
    assert sums is None and loss.item() == pytest.approx(temperature**2 * kl, rel=1e-4)
    plain, _ = SoftTargetKL(temperature, t_squared=False)(s, batch)
    assert plain.item() == pytest.approx(kl, rel=1e-4)


def test_hard_label_kd_is_cross_entropy_on_the_teachers_argmax():
    s, t = _logits(3), _logits(4)
    loss, sums = HardLabelKD()(s, Batch(torch.zeros(6, 1), t))
    top = t.argmax(1).tolist()
    want = -sum(_log_softmax_row(s[i].tolist())[top[i]] for i in range(6)) / 6
    assert sums is None and loss.item() == pytest.approx(want, rel=1e-5)


class _FakeCapture:
    def __init__(self, out: dict[str, torch.Tensor]) -> None:
        self.out = out


def test_nad_loss_is_ce_plus_beta_weighted_attention_distances():
    g = torch.Generator().manual_seed(5)
    acts_s = {n: torch.randn(4, 3, 5, 5, generator=g) for n in ("a", "b")}
    acts_t = {n: torch.randn(4, 3, 5, 5, generator=g) for n in ("a", "b")}
    s, y = _logits(6, b=4), torch.tensor([0, 1, 2, 3])
    loss_fn = AttentionDistillationLoss((_FakeCapture(acts_s), _FakeCapture(acts_t)), ["a", "b"], [2.0, 0.5], 2.0)
    assert loss_fn.metrics == ("ce", "acc", "at:a", "at:b")
    loss, sums = loss_fn(s, Batch(torch.zeros(4, 1), y))
    ce, _ = CrossEntropy()(s, Batch(torch.zeros(4, 1), y))
    ats = [at_loss(acts_s[n], acts_t[n], 2.0).item() for n in ("a", "b")]
    assert loss.item() == pytest.approx(ce.item() + 2.0 * ats[0] + 0.5 * ats[1], rel=1e-5)
    acc = (s.argmax(1) == y).float().mean().item()
    assert sums.tolist() == pytest.approx([4 * ce.item(), 4 * acc, 4 * ats[0], 4 * ats[1]], rel=1e-6)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x.flatten(1) * self.w  # (B, K)


def test_best_epoch_first_keeps_the_earlier_tie_and_last_the_later():
    m = _Tiny()
    first, last = BestEpoch(ties="first"), BestEpoch(ties="last")
    for epoch, score in enumerate([0.5, 0.8, 0.8, 0.7], start=1):
        m.w.data.fill_(epoch)
        first.update(m, epoch, score)
        last.update(m, epoch, score)
    assert (first.epoch, first.score) == (2, 0.8) and (last.epoch, last.score) == (3, 0.8)
    assert first.restore(m) and m.w.item() == 2.0  # a copy of the weights at epoch 2, not a view
    assert last.restore(m) and m.w.item() == 3.0


def test_best_epoch_patience_counts_epochs_without_improvement():
    m = _Tiny()
    best = BestEpoch(ties="first", patience=2)
    stops = []
    for epoch, score in enumerate([0.5, 0.6, 0.6, 0.55, 0.9], start=1):
        best.update(m, epoch, score)
        stops.append(best.stop)
    assert stops == [False, False, False, True, False]  # ties do not improve under "first"
    never = BestEpoch(ties="last")
    for epoch in range(1, 10):
        never.update(m, epoch, 0.0)
    assert not never.stop  # patience 0 never stops
    tie_improves = BestEpoch(ties="last", patience=1)
    tie_improves.update(m, 1, 0.5)
    tie_improves.update(m, 2, 0.5)
    assert not tie_improves.stop and tie_improves.epoch == 2


def test_best_epoch_without_updates_keeps_nothing_and_never_keeps_nan():
    m = _Tiny()
    best = BestEpoch()
    assert not best.restore(m) and best.score is None and best.epoch == 0
    assert not best.update(m, 1, float("nan")) and best.state is None
    assert best.update(m, 2, 0.0) and best.epoch == 2
    with pytest.raises(ConfigError, match="ties"):
        BestEpoch(ties="middle")
    with pytest.raises(ConfigError, match="patience"):
        BestEpoch(patience=-1)


def test_epoch_progress_reports_run_wide_steps_and_the_epoch():
    calls = []
    cb = epoch_progress(lambda s, t, m: calls.append((s, t, m)), epoch=2, steps_per_epoch=4, epochs=5)
    cb(3, {"loss": 0.5})
    assert calls == [(11, 20, {"epoch": 3, "loss": 0.5})]
    assert epoch_progress(None, 0, 4, 5) is None


def _blobs(n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    return centres[y] + torch.randn(n, 2, generator=g), y


def test_one_epoch_of_cross_entropy_reduces_the_loss_and_reports_means():
    x, y = _blobs()
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    g = torch.Generator().manual_seed(1)
    steps = []

    def epoch():
        data = (Batch(x[idx], y[idx]) for idx in batches(len(x), 25, g))
        return train_one_epoch(model, data, CrossEntropy(), opt, CPU, lambda i, m: steps.append((i, sorted(m))))

    rows = [epoch() for _ in range(4)]
    assert set(rows[0]) == {"loss", "acc"} and 0.0 <= rows[-1]["acc"] <= 1.0
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"] and rows[-1]["acc"] > 0.9
    assert steps[:5] == [(i, ["loss"]) for i in range(1, 6)]  # 120 images / 25 → 5 steps, 1-based
    assert model.training


def test_epoch_means_weight_each_batch_by_its_size():
    class Constant(Loss):  # loss = mean of the inputs, metric = that mean per image
        metrics = ("m",)

        def __call__(self, logits, batch):
            loss = logits.sum() * 0 + batch.x.mean()
            return loss, batch.x.mean().double().reshape(1) * len(batch)

    model = _Tiny()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    data = [Batch(torch.full((3, 1), 1.0), torch.zeros(3)), Batch(torch.full((1, 1), 5.0), torch.zeros(1))]
    row = train_one_epoch(model, data, Constant(), opt, CPU)
    assert row == {"loss": pytest.approx(2.0), "m": pytest.approx(2.0)}  # (3·1 + 1·5) / 4
    assert train_one_epoch(model, [], CrossEntropy(), opt, CPU) == {"loss": 0.0, "acc": 0.0}


def test_labelled_batches_normalise_on_the_device_in_shuffled_order(digits, digits_spec):
    data = digits.subset(list(range(10)))
    got = list(labelled_batches(digits_spec, data, 4, torch.Generator().manual_seed(3), CPU))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert [len(b) for b in got] == [4, 4, 2]
    torch.testing.assert_close(torch.cat([b.target for b in got]), data.labels[order])
    torch.testing.assert_close(got[0].x, digits_spec.normalize(data.images[order[:4]]))


def test_kd_batches_draw_the_permutation_then_the_shifts_and_match_the_cache():
    spec = ModelSpec("paper-cnn", 3, (1, 4, 4), (0.5,), (0.25,))
    images = torch.randint(0, 256, (7, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        cached = teacher(spec.normalize(images))
    live = list(kd_batches(teacher, spec, spec, images, 3, torch.Generator().manual_seed(4), CPU))
    from_cache = list(kd_batches(teacher, spec, spec, images, 3, torch.Generator().manual_seed(4), CPU, cached))
    for a, b in zip(live, from_cache, strict=True):
        torch.testing.assert_close(a.x, b.x)
        torch.testing.assert_close(a.target, b.target)
    g, ref = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    shifted = list(kd_batches(teacher, spec, spec, images, 4, g, CPU, augment=True))
    order = torch.randperm(7, generator=ref)
    want = [random_shift(images[order[:4]], ref), random_shift(images[order[4:]], ref)]
    for got, w in zip(shifted, want, strict=True):
        torch.testing.assert_close(got.x, spec.normalize(w))
