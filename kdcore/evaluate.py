"""Step 4 of seed 000: evaluate a model on the clean test set and on the poison test set.

clean_acc:  accuracy on D_test.
poison_acc: accuracy on D^p_test (trigger on every image whose true class is not the target)
            w.r.t. the true labels.
asr:        fraction of the triggered images of victim classes classified as the target
            (victims = all non-target classes, or the source class for source-specific triggers).

D^p_test comes from the trigger (`Trigger.poison_test`): the test set stamped, or for a triggered
test set (`kdcore.triggers.TriggeredSet`) its own images. An unlabelled triggered set has no true
labels: every image is a victim, and poison_acc (and its confusion matrix) is None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from kdcore.data.imageset import ImageSet
from kdcore.models.spec import ModelSpec
from kdcore.train import predict_logits
from kdcore.triggers.base import Trigger
from kdcore.triggers.poison import poison_test_set


@dataclass(frozen=True)
class EvalResult:
    clean_acc: float | None
    poison_acc: float | None = None
    asr: float | None = None
    n_clean: int = 0
    n_poison: int = 0
    confusion_clean: tuple[tuple[int, ...], ...] = ()  # [true][pred]
    confusion_poison: tuple[tuple[int, ...], ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["confusion_clean"] = [list(r) for r in self.confusion_clean]
        d["confusion_poison"] = [list(r) for r in self.confusion_poison]
        return d

    def metrics(self) -> dict:
        return {"clean_acc": self.clean_acc, "poison_acc": self.poison_acc, "asr": self.asr}


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, k: int) -> torch.Tensor:
    """(k, k) counts, rows = true class, columns = predicted class."""
    idx = y_true.long() * k + y_pred.long()
    return torch.bincount(idx, minlength=k * k).view(k, k)


def _rows(m: torch.Tensor) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in r) for r in m.tolist())


def evaluate_model(
    model: nn.Module,
    spec: ModelSpec,
    test: ImageSet,
    device: torch.device,
    trigger: Trigger | None = None,
) -> EvalResult:
    labels = test.require_labels("Evaluation")
    k = spec.num_classes
    pred = predict_logits(model, spec, test.images, device).argmax(1)
    cm = confusion_matrix(labels, pred, k)
    clean_acc = (pred == labels).float().mean().item() if len(test) else None
    if trigger is None:
        return EvalResult(clean_acc, n_clean=len(test), confusion_clean=_rows(cm))
    ptest, victims = poison_test_set(test, trigger)
    p_pred = predict_logits(model, spec, ptest.images, device).argmax(1)
    labelled = ptest.labels is not None
    poison_acc = (p_pred == ptest.labels).float().mean().item() if len(ptest) and labelled else None
    asr = (p_pred[victims] == trigger.target).float().mean().item() if victims.any() else None
    return EvalResult(
        clean_acc,
        poison_acc,
        asr,
        len(test),
        len(ptest),
        _rows(cm),
        _rows(confusion_matrix(ptest.labels, p_pred, k)) if labelled else (),
    )
