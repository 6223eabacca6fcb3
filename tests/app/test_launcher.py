"""`python -m app`'s job processes: the command lines it keeps running, local workers or one Ray dispatcher."""

from __future__ import annotations

import sys

import pytest

from app.__main__ import parse_args, worker_commands


def test_local_workers_one_per_gpu(tmp_path):
    cmds = worker_commands(parse_args(["--data-dir", str(tmp_path), "--workers", "2", "--device", "cuda"]))
    base = [sys.executable, "-m", "kdcore", "worker", "--data-dir", str(tmp_path.resolve())]
    assert cmds == [[*base, "--device", "cuda:0"], [*base, "--device", "cuda:1"]]
    assert worker_commands(parse_args(["--data-dir", str(tmp_path)])) == [[*base, "--device", "auto"]]


def test_ray_executor_starts_one_dispatcher_with_its_flags(tmp_path):
    flags = "--executor ray --device cpu --ray-address 10.0.0.5:6379 --ray-cpus 2"
    flags += " --ray-resource node_b=1 --ray-resource audit=0.5"
    (cmd,) = worker_commands(parse_args(["--data-dir", str(tmp_path), *flags.split()]))
    want = f"-m kdcore worker --data-dir {tmp_path.resolve()} --executor ray --device cpu --ray-address 10.0.0.5:6379"
    want += " --ray-cpus 2.0 --ray-resource node_b=1 --ray-resource audit=0.5"
    assert cmd == [sys.executable, *want.split()]
    (plain,) = worker_commands(parse_args(["--data-dir", str(tmp_path), "--executor", "ray"]))
    assert plain[-4:] == ["--executor", "ray", "--device", "auto"]  # Ray's defaults stay the worker's


@pytest.mark.parametrize(
    "args, says",
    [
        (["--executor", "ray", "--workers", "2"], "--workers is for --executor local"),
        (["--ray-address", "auto"], "go with --executor ray"),
        (["--executor", "ray", "--ray-resource", "node_b"], "NAME=AMOUNT"),
        (["--executor", "ray", "--ray-cpus", "0"], "--ray-cpus must be > 0"),
    ],
)
def test_flags_that_do_not_fit_are_refused_before_anything_starts(args, says, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(args)
    assert e.value.code == 2 and says in capsys.readouterr().err
