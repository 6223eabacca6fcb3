import pytest
import torch
from torch.nn import functional as F

from kdcore.device import resolve_device
from kdcore.distill import DistillConfig, distill, kd_loss, random_shift
from kdcore.errors import ConfigError, InputError
from kdcore.models.registry import build_model
from kdcore.train import TrainConfig, fit, predict_logits, seeded_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_loss_matches_hand_written_t2_kl(temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    p_t = torch.softmax(t / temperature, 1)
    p_s = torch.softmax(s / temperature, 1)
    expected = temperature**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    assert kd_loss(s, t, temperature).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    x = torch.randn(8, 5)
    assert kd_loss(x, x, 20.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(x, x.flip(1), 20.0).item() > 0


def test_kd_loss_gradient_matches_autograd_of_formula():
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6)
    kd_loss(s, t, 5.0).backward()
    s2 = s.detach().clone().requires_grad_(True)
    (25 * F.kl_div(F.log_softmax(s2 / 5, 1), F.softmax(t / 5, 1), reduction="batchmean")).backward()
    torch.testing.assert_close(s.grad, s2.grad)


@pytest.fixture(scope="module")
def teacher(digits, digits_spec):
    train = digits.subset(list(range(1000)))
    model = seeded_model(lambda: build_model(digits_spec), 0)
    model, _ = fit(model, digits_spec, train, TrainConfig(epochs=8, batch_size=64), CPU, seed=0)
    return model.eval()


def test_distilled_student_agrees_with_teacher(digits, digits_spec, teacher):
    unl = digits.subset(list(range(1000, 1600))).unlabeled()
    student = seeded_model(lambda: build_model(digits_spec), 1)
    cfg = DistillConfig(epochs=15, batch_size=64, holdout_fraction=0.2)
    student, res = distill(teacher, student, digits_spec, unl, cfg, CPU, seed=0)
    test = digits.subset(list(range(1600, 1797)))
    agree = (
        (
            predict_logits(student, digits_spec, test.images, CPU).argmax(1)
            == predict_logits(teacher, digits_spec, test.images, CPU).argmax(1)
        )
        .float()
        .mean()
        .item()
    )
    assert agree > 0.85
    assert res.n_holdout == 120 and res.n_images == 480
    assert 1 <= res.best_epoch <= 15 and res.holdout_agreement > 0.8
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_cached_teacher_logits_train_the_same_student_as_the_naive_loop(digits, digits_spec, teacher):
    # Caching is an optimisation only: with no augmentation it must not change the result.
    unl = digits.subset(list(range(1000, 1300))).unlabeled()
    results = []
    for cache in (True, False):
        student = seeded_model(lambda: build_model(digits_spec), 3)
        cfg = DistillConfig(epochs=2, batch_size=50, cache_teacher=cache)
        student, _ = distill(teacher, student, digits_spec, unl, cfg, CPU, seed=5)
        results.append(student.state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-5)


def test_augmented_distillation_runs_teacher_per_batch(digits, digits_spec, teacher):
    calls = []
    handle = teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        unl = digits.subset(list(range(1000, 1200))).unlabeled()
        student = seeded_model(lambda: build_model(digits_spec), 1)
        distill(
            teacher,
            student,
            digits_spec,
            unl,
            DistillConfig(epochs=1, batch_size=50, augment=True, holdout_fraction=0.0),
            CPU,
            seed=0,
        )
    finally:
        handle.remove()
    assert calls.count(50) == 4  # once per training batch, no cache pass


def test_random_shift_moves_content_within_bounds():
    x = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 3:5, 3:5] = 255
    y = random_shift(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert all(int(img.sum()) == 4 * 255 for img in y)  # a centred blob never leaves the frame at ±2


def test_distill_rejects_bad_config_and_empty_data(digits, digits_spec, teacher):
    with pytest.raises(ConfigError):
        DistillConfig(temperature=0)
    with pytest.raises(ConfigError):
        DistillConfig(holdout_fraction=0.7)
    with pytest.raises(InputError):
        distill(teacher, build_model(digits_spec), digits_spec, digits.subset([0]), DistillConfig(epochs=1), CPU)


def test_auto_device_is_cpu_here_and_cuda_refused_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA"):
        resolve_device("cuda")
