"""kdcore.models.spec: every field of a spec from an untrusted file is checked for type and range."""

from __future__ import annotations

import json

import pytest

from kdcore.errors import ConfigError
from kdcore.models.spec import ModelSpec, json_depth

BASE = {"arch": "paper-cnn", "num_classes": 10, "input_shape": [1, 8, 8]}


def test_valid_spec_round_trips_and_json_floats_that_are_whole_are_ints() -> None:
    spec = ModelSpec.from_json(json.dumps({**BASE, "num_classes": 10.0, "mean": [0], "std": [1]}))
    assert spec.num_classes == 10 and isinstance(spec.num_classes, int)
    assert ModelSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"arch": ["paper-cnn"]}, r"arch must be an architecture name.*got list \['paper-cnn'\]"),
        ({"arch": ""}, r"arch must be an architecture name"),
        ({"num_classes": 10.5}, r"num_classes must be a whole number; got float 10\.5"),
        ({"num_classes": True}, r"num_classes must be a whole number; got bool"),
        ({"num_classes": "10"}, r"num_classes must be a whole number; got str"),
        ({"num_classes": 10**12}, r"1,000,000,000,000; at most 100,000 classes.*max_num_classes"),
        ({"num_classes": 1}, r"at least 2"),
        ({"input_shape": [1, 100_000, 100_000]}, r"10,000,000,000 pixels.*max_input_pixels"),
        ({"input_shape": [1, 8.5, 8]}, r"input_shape must be whole numbers; got float 8\.5"),
        ({"input_shape": 8}, r"input_shape must be a list; got int 8"),
        ({"input_shape": []}, r"\(C, H, W\)"),
        ({"mean": [float("nan")]}, r"mean must be finite numbers; got float nan"),
        ({"std": ["a"]}, r"std must be finite numbers; got str 'a'"),
        ({"class_names": [{"a": 1}] * 10}, r"class_names must be strings; got dict"),
        ({"extra": [1]}, r"extra must be a mapping"),
        ({"extra": {"a": {"b": 1}}}, r"extra option 'a' must be a number, string, bool or a flat list"),
        ({"extra": {"not an identifier": 1}}, r"extra option names must be identifiers"),
        ({"colour": "red"}, r"Unknown model spec keys \['colour'\]"),
    ],
)
def test_bad_fields_are_config_errors(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelSpec.from_json(json.dumps({**BASE, **change}))


def test_json_nesting_is_limited(set_limits) -> None:
    with pytest.raises(ConfigError, match=r"nested more than 100 levels deep \(max_nesting\)"):
        ModelSpec.from_json("[" * 100_000 + "]" * 100_000)  # deeper than json's own recursion limit
    nested = json.dumps({**BASE, "extra": {"a": [1]}})
    assert ModelSpec.from_json(nested).extra == {"a": [1]}
    set_limits(max_nesting=1)
    with pytest.raises(ConfigError, match="nested more than 1 levels"):
        ModelSpec.from_json(nested)


def test_json_depth_oracle() -> None:
    assert [json_depth(v) for v in (1, [], {}, [[1]], {"a": [{"b": 2}]}, [1, [2, [3]], 4])] == [0, 1, 1, 2, 3, 3]


def test_not_json_or_not_an_object() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelSpec.from_json("{nope")
    with pytest.raises(ConfigError, match="must be a JSON object; got list"):
        ModelSpec.from_json("[1, 2]")
