"""kdcore.stages: content-keyed stage folders (run once, reuse, never trust a half-written stage)
and the fingerprint that keys them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcore.data.imageset import ImageSet
from kdcore.distill import DistillConfig
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.stages import Stages, fingerprint
from kdcore.train import TrainConfig, seeded_model


class Counter:
    """A stage function that writes a file and counts its calls."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = 0, fail

    def __call__(self, folder: Path) -> dict:
        self.calls += 1
        (folder / "out.txt").write_text("done")
        if self.fail:
            raise RuntimeError("stage crashed")
        return {"value": 42}


def test_two_runs_of_one_stage_at_once_compute_it_once(tmp_path: Path) -> None:
    """Parts of a fanned-out sweep share a seed's teacher: the second waits for the first's lock and
    reuses its output instead of training it again (threads here; processes and nodes alike)."""
    import threading
    import time

    calls, started = [], threading.Event()

    def slow(folder: Path) -> dict:
        calls.append(threading.get_ident())
        started.set()
        time.sleep(0.8)
        (folder / "out.txt").write_text("done")
        return {"value": 1}

    results: dict[str, object] = {}

    def run(name: str) -> None:
        results[name] = Stages(tmp_path / "stages").run("teacher", "k", slow)

    a = threading.Thread(target=run, args=("a",))
    a.start()
    started.wait(5)
    b = threading.Thread(target=run, args=("b",))
    b.start()
    a.join(10)
    b.join(10)
    assert len(calls) == 1
    assert not results["a"].reused and results["b"].reused and results["b"].meta == {"value": 1}
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == ["teacher-k"]  # no lock file left


def test_run_once_then_reuse(tmp_path: Path) -> None:
    stages, fn = Stages(tmp_path / "stages"), Counter()
    first = stages.run("distill", "abc", fn)
    assert fn.calls == 1 and not first.reused and first.meta == {"value": 42}
    assert first.dir == tmp_path / "stages" / "distill-abc" and (first.dir / "out.txt").read_text() == "done"
    stored = json.loads((first.dir / "stage.json").read_text())
    assert stored["meta"] == {"value": 42} and stored["key"] == "abc" and stored["seconds"] >= 0

    second = Stages(tmp_path / "stages").run("distill", "abc", fn)
    assert fn.calls == 1
    assert second.reused and second.meta == {"value": 42} and second.dir == first.dir and second.seconds == 0.0

    other = stages.run("distill", "abd", fn)
    assert fn.calls == 2 and not other.reused


def test_failed_stage_leaves_nothing_and_runs_again(tmp_path: Path) -> None:
    root = tmp_path / "stages"
    stages, bad = Stages(root), Counter(fail=True)
    with pytest.raises(RuntimeError, match="stage crashed"):
        stages.run("finetune", "k1", bad)
    assert bad.calls == 1
    assert list(root.iterdir()) == [], "no final folder and no temporary folder may remain"

    good = Counter()
    out = stages.run("finetune", "k1", good)
    assert good.calls == 1 and not out.reused and (out.dir / "out.txt").exists()
    assert [p.name for p in root.iterdir()] == ["finetune-k1"]


def test_folder_without_stage_json_is_not_trusted(tmp_path: Path) -> None:
    stages, fn = Stages(tmp_path), Counter()
    stages.path("detox", "k").mkdir()  # e.g. left by an older, non-atomic writer
    out = stages.run("detox", "k", fn)
    assert fn.calls == 1 and not out.reused


def _model(seed: int) -> nn.Module:
    return seeded_model(lambda: build_model(ModelSpec("paper-cnn", 10, (1, 8, 8))), seed)


def test_fingerprint_equal_inputs_equal_keys(digits: ImageSet) -> None:
    x = torch.arange(12, dtype=torch.float32).view(3, 4)
    assert fingerprint(x) == fingerprint(x.clone())
    assert fingerprint(x.t()) == fingerprint(x.t().contiguous())
    assert fingerprint(digits) == fingerprint(digits.subset(torch.arange(len(digits))))
    assert fingerprint(_model(0)) == fingerprint(_model(0))
    assert fingerprint("distill", DistillConfig(epochs=3), 0) == fingerprint("distill", DistillConfig(epochs=3), 0)
    assert len(fingerprint("x")) == 20 and int(fingerprint("x"), 16) >= 0


def test_fingerprint_changes_with_any_value(digits: ImageSet) -> None:
    x = torch.arange(12, dtype=torch.float32).view(3, 4)
    y = x.clone()
    y[2, 3] += 1
    assert fingerprint(x) != fingerprint(y)
    assert fingerprint(x) != fingerprint(x.view(4, 3))  # same bytes, other shape
    assert fingerprint(x) != fingerprint(x.double())  # same values, other dtype

    images = digits.images.clone()
    images[0, 0, 3, 3] ^= 1
    assert fingerprint(digits) != fingerprint(ImageSet(images, digits.labels))
    labels = digits.labels.clone()
    labels[5] = (labels[5] + 1) % 10
    assert fingerprint(digits) != fingerprint(digits.with_labels(labels))
    assert fingerprint(digits) != fingerprint(digits.unlabeled())

    model = _model(0)
    changed = _model(0)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert fingerprint(model) != fingerprint(changed)

    assert fingerprint(TrainConfig()) != fingerprint(TrainConfig(lr=2e-3))
    assert fingerprint("distill", 0) != fingerprint("distill", 1)
    assert fingerprint("a", "b") != fingerprint("b", "a")


def test_fingerprint_model_with_batchnorm() -> None:
    def model() -> nn.Module:
        return seeded_model(lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), 0)

    assert fingerprint(model()) == fingerprint(model())
    assert fingerprint(torch.tensor(1.0)) != fingerprint(torch.tensor(2.0))
