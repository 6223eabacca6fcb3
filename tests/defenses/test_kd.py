"""KD (the core method as a registered repairer-detector): the same numbers as the demo / audit
pipeline on the same inputs (one implementation), cached stages reused, and without a training set
it repairs (the distilled student) but flags nothing."""

from __future__ import annotations

import pytest
import torch

from kdcore.defenses import KD, RepairerDetector, get_defense
from kdcore.errors import InputError
from kdcore.pipeline import KDConfig, run_kd_pipeline
from kdcore.stages import Stages

CFG = {
    "distill": {"epochs": 6, "batch_size": 64},
    "finetune": {"epochs": 2, "lr": 1e-4, "val_fraction": 0.1, "patience": 0},
}


def test_registered_with_the_pipeline_config():
    assert get_defense("kd") is KD and issubclass(KD, RepairerDetector)
    assert KD.family == "repairer+detector" and KD.needs == ("unlabeled",) and not KD.needs_labels
    assert KD.config_class is KDConfig


def test_same_numbers_as_the_pipeline_and_stages_reused(digits_backdoor, tmp_path):
    inputs = digits_backdoor(work_dir=tmp_path / "kd")
    result = KD.from_params(CFG).run(inputs)

    ref = run_kd_pipeline(
        inputs.model, inputs.spec, inputs.unlabeled, KD.from_params(CFG).config, Stages(tmp_path / "pipeline"),
        inputs.device, train=inputs.train, test=inputs.test, trigger=inputs.trigger, poison_idx=inputs.poison_idx,
    )  # fmt: skip
    assert result.suspect.metrics() == ref.evals["teacher"].metrics()
    assert result.others["student"].metrics() == ref.evals["student"].metrics()
    assert result.repaired.metrics() == ref.evals["finetuned"].metrics()
    assert result.detection == ref.detox  # flagged, precision, recall against the ground truth
    assert result.detection.recall >= 0.8 and result.repaired.asr <= 0.2  # the backdoor is disabled
    assert result.flagged.sum() == ref.detox.flagged and result.scores.shape == (len(inputs.train),)
    assert set(result.per_sample) == {"teacher_pred", "student_pred", "teacher_conf", "student_conf"}
    assert result.headline.startswith(f"{ref.detox.flagged:,} of 1,000 training samples flagged")
    assert "headline" not in result.evidence and set(result.timings) == {"distill", "finetune"}

    # The same stage keys as the pipeline: a second run reuses both stages from the work folder.
    folders = sorted(p.name for p in (tmp_path / "kd").iterdir())
    assert folders == sorted(p.name for p in (tmp_path / "pipeline").iterdir())
    again = KD.from_params(CFG).run(digits_backdoor(work_dir=tmp_path / "kd"))
    assert again.repaired.metrics() == result.repaired.metrics()
    assert sorted(p.name for p in (tmp_path / "kd").iterdir()) == folders


def test_without_a_training_set_it_repairs_but_flags_nothing(digits_backdoor):
    result = KD.from_params({**CFG, "distill": {"epochs": 1, "batch_size": 64}}).run(digits_backdoor(train=None))
    assert result.repaired is not None and result.others == {}
    assert result.detection is None and result.flagged is None
    assert result.headline.startswith("distilled a student on 500")
    assert any("No labelled training set" in n for n in result.evidence["notes"])
    with pytest.raises(InputError, match="unlabelled clean images"):
        KD().run(digits_backdoor(unlabeled=None))
    assert isinstance(result.model, torch.nn.Module)
