"""A run's labelled sets share one class index → class mapping, or the run stops with the folders named."""

from __future__ import annotations

import pytest

from kdcore.errors import InputError
from kdcore.models.spec import ModelSpec
from kdcore.runs.common import labelled_sets
from tests.hostile.corpus import _labelled

SPEC = ModelSpec(arch="paper-cnn", num_classes=10, input_shape=(1, 8, 8))


def test_training_classes_c0_to_c9_against_test_classes_0_to_9_is_an_error(tmp_path):
    train = _labelled(tmp_path / "train", [f"c{i}" for i in range(10)])
    test = _labelled(tmp_path / "test", [str(i) for i in range(10)])
    with pytest.raises(InputError) as e:
        labelled_sets(SPEC, str(train), str(test))
    assert "c0" in str(e.value) and "'0'" in str(e.value)


def test_a_missing_class_folder_without_class_names_is_an_error_not_a_label_shift(tmp_path):
    test = _labelled(tmp_path / "test", [str(i) for i in range(10) if i != 3])
    with pytest.raises(InputError, match="9 class folders but the model outputs 10"):
        labelled_sets(SPEC, test_path=str(test))


def test_matching_sets_load_and_name_the_model_classes(tmp_path):
    names = [f"class_{i}" for i in range(10)]
    train = _labelled(tmp_path / "train", names)
    test = _labelled(tmp_path / "test", names)
    clean = _labelled(tmp_path / "clean", names)
    tr, te, cl, spec = labelled_sets(SPEC, str(train), str(test), str(clean))
    assert spec.class_names == tuple(names) and tr.class_names == te.class_names == cl.class_names == tuple(names)
    assert tr.labels.tolist() == te.labels.tolist() == list(range(10))
