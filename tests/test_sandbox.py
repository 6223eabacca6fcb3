"""kdcore.sandbox: real readers in real child processes, and test readers that misbehave the way
hostile files make readers misbehave (tests/sandbox_readers.py)."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
import torch

from kdcore import sandbox
from kdcore.data.folders import load_labeled
from kdcore.errors import ConfigError, InputError, ModelLoadError
from kdcore.models.layers import layer_report
from kdcore.models.loading import load_model, read_state_dict, save_model
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.sandbox import runner
from tests.hostile.corpus import deep_tuple_pt

SMALL = sandbox.Budget(memory_bytes=300 * 2**20, cpu_s=2, timeout_s=6)
R = "tests.sandbox_readers:"


@pytest.fixture(scope="module", autouse=True)
def _server():
    sandbox.prestart()  # its one-time import of torch is not part of any timing below


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """The sandbox's temp dirs go under tmp_path/t, so a test can see what is left behind."""
    t = tmp_path / "t"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t


def timed(fn, *args, **kwargs):
    t0 = time.monotonic()
    try:
        fn(*args, **kwargs)
    except Exception as e:
        return e, time.monotonic() - t0
    raise AssertionError("expected an error")


def test_model_through_the_sandbox_equals_a_direct_load(tmp_path):
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28), (0.5,), (0.25,), tuple("abcdefghij"))
    torch.manual_seed(3)
    path = save_model(build_model(spec), spec, tmp_path / "m.safetensors")
    direct, direct_spec = load_model(path, None, "cpu")
    boxed, boxed_spec = sandbox.load_model(path, None, "cpu")
    assert boxed_spec == direct_spec
    a, b = direct.state_dict(), boxed.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert not boxed.training
    # the same random draws in the parent as a direct load (build_model), so audits keep their numbers
    torch.manual_seed(0)
    load_model(path, None, "cpu")
    after_direct = torch.rand(3)
    torch.manual_seed(0)
    sandbox.load_model(path, None, "cpu")
    assert torch.equal(torch.rand(3), after_direct)
    assert sandbox.read_spec(path) == spec
    assert sandbox.check_model(path, None) == (
        spec,
        sum(p.numel() for p in direct.parameters()),
        layer_report(direct, spec),
    )
    assert torch.equal(read_state_dict(path)["features.0.weight"], b["features.0.weight"])


def test_image_sets_and_single_images_come_back_whole(digits_files):
    direct = load_labeled(digits_files["test"], (1, 8, 8), name="test")
    boxed = sandbox.load_labeled(digits_files["test"], (1, 8, 8), name="test")
    assert torch.equal(boxed.images, direct.images) and torch.equal(boxed.labels, direct.labels)
    assert (boxed.class_names, boxed.sources, boxed.name, boxed.skipped) == (
        direct.class_names,
        direct.sources,
        direct.name,
        direct.skipped,
    )
    unl = sandbox.load_unlabeled(digits_files["unlabeled"], (1, 8, 8))
    assert unl.labels is None and len(unl) > 0
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buf, format="PNG")
    img = sandbox.decode_image(buf.getvalue(), (1, 8, 8), "x.png")
    assert img.dtype == torch.uint8 and img.shape == (1, 8, 8) and int(img.min()) == 200
    with pytest.raises(InputError, match=r"x\.txt"):
        sandbox.decode_image(b"not an image", (1, 8, 8), "x.txt")


def test_values_of_every_kind_come_back():
    v = sandbox.run(R + "values", (), SMALL)
    assert torch.equal(v["t"], torch.arange(6, dtype=torch.float32).view(2, 3))
    assert v["n"] == (1, "a", None) and v["b"].dtype == torch.bool


@pytest.mark.parametrize("reader", ["allocate", "allocate_tensor"])
def test_a_memory_bomb_is_refused_with_the_memory_budget_named(reader):
    e, _ = timed(sandbox.run, R + reader, (2 * 2**30,), SMALL, ModelLoadError, "bomb.pt")
    assert type(e) is ModelLoadError
    assert "bomb.pt: this file could not be read safely (it needed more than 0.3 GB of memory)" in str(e)


def test_a_cpu_bomb_is_stopped_at_the_cpu_limit():
    budget = sandbox.Budget(300 * 2**20, cpu_s=2, timeout_s=60)  # wall time: CI's 2 cores may be shared
    e, took = timed(sandbox.run, R + "spin", (), budget, InputError, "spin.zip")
    assert type(e) is InputError and "took longer than 2 s of CPU time" in str(e), e
    assert took > 1.5  # stopped at the limit, not before it (a lower bound: a busy machine only adds)


def test_a_hang_is_killed_at_the_timeout():
    budget = sandbox.Budget(300 * 2**20, cpu_s=10, timeout_s=1.5)
    e, took = timed(sandbox.run, R + "sleep", (60,), budget, InputError, "fifo")
    assert type(e) is InputError and "it took longer than 1.5 s;" in str(e), e
    assert took > 1.4  # killed at the timeout, not before it (the reader sleeps 60 s)


def test_a_segfault_is_reported_as_a_crash():
    e, _ = timed(sandbox.run, R + "segfault", (), SMALL, ModelLoadError, "deep.pt")
    assert type(e) is ModelLoadError and "it crashed with SIGSEGV" in str(e)


def test_the_deep_tuple_pt_of_issue_11_is_an_error_not_a_dead_process(tmp_path):
    e, _ = timed(sandbox.check_model, deep_tuple_pt(tmp_path), None)
    assert isinstance(e, ModelLoadError) and "deep.pt" in str(e)


def test_a_kdcore_error_keeps_its_class_and_message():
    with pytest.raises(ConfigError, match=r"^exactly this$"):
        sandbox.run(R + "fail", ("ConfigError", "exactly this"), SMALL)


def test_any_other_exception_is_a_bug_with_the_child_traceback():
    with pytest.raises(RuntimeError, match=r"(?s)bug.*KeyError: 'not a KDCoreError'"):
        sandbox.run(R + "bug", (), SMALL)


def test_a_zero_byte_safetensors_is_a_model_load_error(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        sandbox.read_spec(tmp_path / "empty.safetensors")


def test_nothing_is_left_outside_the_temp_dir_and_the_temp_dir_is_removed(private_tmp, tmp_path):
    cwd = sorted(os.listdir("."))
    written = sandbox.run(R + "write_file", ("relative.txt", "x"), SMALL)
    assert Path(written).parent.parent == private_tmp  # it landed in the call's own temp dir …
    assert list(private_tmp.iterdir()) == []  # … which is gone, with everything in it
    assert sorted(os.listdir(".")) == cwd
    for reader, args in (("spin", ()), ("segfault", ()), ("allocate", (2**31,))):
        with pytest.raises(InputError):
            sandbox.run(R + reader, args, SMALL)
    assert list(private_tmp.iterdir()) == []


def test_a_killed_child_takes_its_process_group_with_it():
    budget = sandbox.Budget(300 * 2**20, cpu_s=10, timeout_s=1)
    with pytest.raises(InputError):
        sandbox.run(R + "sleep", (60,), budget)
    time.sleep(0.2)
    children = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == runner._SERVER.proc.pid]
    assert children == []  # the server reaped it: no zombie, no sleeper


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_scaled_budgets_grow_with_the_input(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"\0" * 2**20)
    flat = sandbox.Budget.flat()
    model = sandbox.Budget.scaled(tmp_path / "big.bin", "model")
    images = sandbox.Budget.scaled(tmp_path, "images")
    assert model.memory_bytes == flat.memory_bytes + 3 * 2**20
    from kdcore.limits import current

    assert images.memory_bytes == flat.memory_bytes + current().max_dataset_bytes
    assert images.timeout_s > flat.timeout_s and images.cpu_s > flat.cpu_s
    assert signal.SIGXCPU  # the CPU limit's signal exists on this platform


def test_cli_limit_sets_the_limits_that_the_sandboxed_readers_see(tmp_path):
    from kdcore import limits
    from kdcore.cli import EXIT_INPUT, EXIT_OK, main

    old = limits.current()
    try:
        assert (
            main(
                [
                    "--limit",
                    "max_nesting=7",
                    "--limit",
                    "max_archive_bytes=1GiB",
                    "jobs",
                    "list",
                    "--data-dir",
                    str(tmp_path),
                ]
            )
            == EXIT_OK
        )
        assert (limits.current().max_nesting, limits.current().max_archive_bytes) == (7, 2**30)
        assert sandbox.run(R + "current_limit", ("max_nesting",), SMALL) == 7
    finally:
        limits.use(old)
    assert main(["--limit", "no_such_limit=1", "jobs", "list", "--data-dir", str(tmp_path)]) == EXIT_INPUT
