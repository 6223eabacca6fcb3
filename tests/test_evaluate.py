"""kdcore.evaluate: confusion matrices against scikit-learn, and clean_acc / poison_acc / asr of
hand-built models whose every prediction is known in advance, on real digits."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torch import nn

from kdcore.data.imageset import ImageSet
from kdcore.evaluate import EvalResult, confusion_matrix, evaluate_model
from kdcore.models.spec import ModelSpec
from kdcore.triggers import BadNets

SPEC = ModelSpec("paper-cnn", 10, (1, 8, 8), (0.3,), (0.4,))
CPU = torch.device("cpu")
TARGET = 7
# One white pixel in the top-left corner: every sklearn digit has pixel (0, 0) == 0, so the stamp is
# always visible and removing it recovers the clean image exactly.
TRIGGER = BadNets(target=TARGET, size=1, location="top-left", margin=0, color=(255, 255, 255))
BACKDOORED = (0, 1, 2)  # classes the hand-built backdoor flips to the target


def _uint8(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Undo ModelSpec.normalize: float (B, C, H, W) → the uint8 images the model was given."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (x * std + mean).mul(255).round().to(torch.uint8)


class ConstantModel(nn.Module):
    """Always predicts `cls`."""

    def __init__(self, cls: int, k: int = 10):
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(cls), k).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


class LookupBackdoor(nn.Module):
    """A perfect clean classifier (looks each image up in a table of true labels) with a backdoor:
    when pixel (0, 0) is white and the clean image's class is in BACKDOORED, it says TARGET."""

    def __init__(self, data: ImageSet, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.table = {x.numpy().tobytes(): int(y) for x, y in zip(data.images, data.labels, strict=True)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = _uint8(x, self.spec)
        preds = []
        for img in images:
            triggered = bool(img[0, 0, 0] == 255)
            clean = img.clone()
            clean[0, 0, 0] = 0
            label = self.table[clean.numpy().tobytes()]
            preds.append(TARGET if triggered and label in BACKDOORED else label)
        return torch.nn.functional.one_hot(torch.tensor(preds), 10).float()


@pytest.fixture(scope="module")
def test_set(digits: ImageSet) -> ImageSet:
    return digits.subset(torch.arange(400), name="digits-test")


@pytest.mark.parametrize("k", [2, 3, 10])
def test_confusion_matrix_matches_sklearn(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    y_true = torch.randint(0, k, (500,), generator=g)
    y_pred = torch.randint(0, k, (500,), generator=g)
    ours = confusion_matrix(y_true, y_pred, k)
    assert ours.shape == (k, k)
    assert ours.tolist() == sk_confusion_matrix(y_true.numpy(), y_pred.numpy(), labels=list(range(k))).tolist()


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 1]), 3)
    assert cm.tolist() == [[0, 2, 0], [0, 1, 0], [0, 0, 0]]


def test_always_target_model(test_set: ImageSet) -> None:
    res = evaluate_model(ConstantModel(TARGET), SPEC, test_set, CPU, TRIGGER)
    n_target = int((test_set.labels == TARGET).sum())
    assert res.clean_acc == pytest.approx(n_target / len(test_set))
    assert res.asr == 1.0
    assert res.poison_acc == 0.0  # no target-class images remain in the poison test set
    assert res.n_clean == len(test_set) and res.n_poison == len(test_set) - n_target
    assert [row[TARGET] for row in res.confusion_poison] == torch.bincount(
        test_set.labels[test_set.labels != TARGET], minlength=10
    ).tolist()
    assert sum(map(sum, res.confusion_clean)) == len(test_set)


def test_lookup_backdoor_all_to_one(digits: ImageSet, test_set: ImageSet) -> None:
    model = LookupBackdoor(digits, SPEC)
    res = evaluate_model(model, SPEC, test_set, CPU, TRIGGER)
    labels = test_set.labels
    non_target = labels[labels != TARGET]
    flipped = torch.isin(non_target, torch.tensor(BACKDOORED))
    assert res.clean_acc == 1.0
    assert res.asr == pytest.approx(flipped.float().mean().item())
    assert res.poison_acc == pytest.approx((~flipped).float().mean().item())
    assert 0.0 < res.asr < 1.0
    assert res.confusion_clean == tuple(
        tuple(int(labels.eq(i).sum()) if i == j else 0 for j in range(10)) for i in range(10)
    )
    for c in range(10):
        row = res.confusion_poison[c]
        n = int((non_target == c).sum())
        assert row[TARGET if c in BACKDOORED else c] == n and sum(row) == n


@pytest.mark.parametrize(("source", "asr"), [(1, 1.0), (5, 0.0)])
def test_lookup_backdoor_source_specific_counts_only_the_source(
    digits: ImageSet, test_set: ImageSet, source: int, asr: float
) -> None:
    trig = BadNets(target=TARGET, source=source, size=1, location="top-left", margin=0)
    res = evaluate_model(LookupBackdoor(digits, SPEC), SPEC, test_set, CPU, trig)
    all_to_one = evaluate_model(LookupBackdoor(digits, SPEC), SPEC, test_set, CPU, TRIGGER)
    assert res.asr == asr
    # poison_acc still covers every non-target image, whatever the source.
    assert res.poison_acc == all_to_one.poison_acc
    assert res.n_poison == all_to_one.n_poison


def test_without_trigger(test_set: ImageSet) -> None:
    res = evaluate_model(ConstantModel(3), SPEC, test_set, CPU)
    assert res.poison_acc is None and res.asr is None and res.confusion_poison == ()
    assert res.clean_acc == pytest.approx((test_set.labels == 3).float().mean().item())
    assert res.metrics() == {"clean_acc": res.clean_acc, "poison_acc": None, "asr": None}


def test_only_target_images_gives_no_poison_metrics(test_set: ImageSet) -> None:
    only_target = test_set.subset(torch.nonzero(test_set.labels == TARGET).flatten())
    res = evaluate_model(ConstantModel(TARGET), SPEC, only_target, CPU, TRIGGER)
    assert res.clean_acc == 1.0
    assert res.n_poison == 0 and res.poison_acc is None and res.asr is None


def test_to_dict_is_json_lists(test_set: ImageSet) -> None:
    d = evaluate_model(ConstantModel(0), SPEC, test_set, CPU, TRIGGER).to_dict()
    assert set(d) == {f for f in EvalResult.__dataclass_fields__}
    assert isinstance(d["confusion_clean"], list) and all(isinstance(r, list) for r in d["confusion_poison"])
    assert len(d["confusion_clean"]) == 10
