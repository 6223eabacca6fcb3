"""The recovered trigger (kdcore.triggers.recovered): parse, pin, stamp against apply_recovered."""

from __future__ import annotations

import json

import pytest
import torch

from kdcore.errors import ConfigError
from kdcore.triggers import Recovered, Trigger, parse_trigger
from kdcore.triggers.recovered import FILE, apply_recovered, read_recovered, recovered_tensors, write_recovered


def fake_run(tmp_path, flagged=(False, False, True, False), c=1, h=8, w=8):
    g = torch.Generator().manual_seed(0)
    k = len(flagged)
    mask = torch.rand(k, h, w, generator=g)
    pattern = torch.rand(k, c, h, w, generator=g) * 255
    index = torch.tensor([0.5, 1.0, 3.0, 2.5][:k], dtype=torch.float64)
    write_recovered(tmp_path / FILE, recovered_tensors(mask, pattern, list(range(k)), torch.tensor(flagged), index))
    return tmp_path, mask, pattern


def test_short_form_parses_and_stamps_like_apply_recovered(tmp_path):
    run, mask, pattern = fake_run(tmp_path)
    t = parse_trigger(f"recovered:{run},class=1")
    assert isinstance(t, Recovered) and t.target == 1 and len(t.file_sha256) == 64
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    oracle = ((1 - mask[1]) * x.float() + mask[1] * pattern[1]).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(t.stamp(x), oracle)
    assert torch.equal(t.stamp(x), apply_recovered(x, mask[1], pattern[1]))


def test_default_class_is_the_flagged_one_else_the_most_anomalous(tmp_path):
    run, *_ = fake_run(tmp_path / "a")
    assert parse_trigger(f"recovered:{run}").target == 2  # flagged
    run, *_ = fake_run(tmp_path / "b", flagged=(False, False, False, False))
    assert parse_trigger(f"recovered:{run}").target == 2  # largest anomaly index


def test_json_round_trip_and_pinning(tmp_path):
    run, *_ = fake_run(tmp_path)
    t = parse_trigger(json.dumps({"kind": "recovered", "run": str(run), "class": 3}))
    again = Trigger.from_dict(t.to_dict())
    assert again == t and again.target == 3 and "file_sha256" not in t.describe()
    fake_run(tmp_path, flagged=(True, False, False, False))  # the file changes under the trigger
    with pytest.raises(ConfigError, match="changed since"):
        Trigger.from_dict(t.to_dict())


def test_bad_run_dirs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="holds no recovered trigger") as e:
        parse_trigger(f"recovered:{tmp_path / 'nope'}")
    assert "\n" not in str(e.value)
    (tmp_path / FILE).parent.mkdir(parents=True)
    (tmp_path / FILE).write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="not a readable safetensors") as e:
        parse_trigger(f"recovered:{tmp_path}")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="needs the run directory"):
        parse_trigger("recovered:")


def test_wrong_class_and_wrong_input_size_are_errors(tmp_path):
    run, *_ = fake_run(tmp_path)
    with pytest.raises(ConfigError, match="Class 9 has no recovered trigger"):
        parse_trigger(f"recovered:{run},class=9")
    t = parse_trigger(f"recovered:{run}")
    with pytest.raises(ConfigError, match="for 1×8×8 inputs"):
        t.check_input((3, 8, 8))


def test_read_recovered_checks_shapes(tmp_path):
    from safetensors.torch import save

    (tmp_path / FILE).parent.mkdir(parents=True)
    (tmp_path / FILE).write_bytes(save({"mask": torch.zeros(2, 4, 4)}))
    with pytest.raises(ConfigError, match="missing"):
        read_recovered(tmp_path)
