"""Architectures from outside kdcore: a plugin package installed in the test, and --arch-file with trust.

The plugin is "installed" the way pip leaves a package: the module and a `*.dist-info` folder with
`entry_points.txt` in a folder on sys.path (PYTHONPATH for the subprocesses), which is all
importlib.metadata looks at. The CLI runs as a separate process, as a dashboard worker does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from kdcore.cli import main
from kdcore.config import from_dict
from kdcore.errors import ConfigError, InputError
from kdcore.models import plugins
from kdcore.models.plugins import GROUP, TRUST_ENV, plugin_names
from kdcore.models.registry import arch_names, build_model
from kdcore.models.spec import ModelSpec
from kdcore.runs.configs import AuditConfig

ROOT = Path(__file__).resolve().parents[2]

MODEL_CODE = '''
from torch import nn


class TinyNet(nn.Module):
    """conv → ReLU → linear, for any (C, H, W)."""

    def __init__(self, num_classes, input_shape, width=4):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(width * h * w, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class NoConv(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.fc1 = nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).relu())
'''

ENTRY_POINTS = f"""[{GROUP}]
tiny-plugin = kdplug_test:TinyNet
broken-plugin = kdplug_test.missing:Net
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder holding an installed plugin package (module + dist-info with entry points)."""
    root = tmp_path_factory.mktemp("site")
    (root / "kdplug_test").mkdir()
    (root / "kdplug_test" / "__init__.py").write_text(MODEL_CODE)
    info = root / "kdplug_test-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdplug-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


@pytest.fixture
def installed(site, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def untrusted(monkeypatch):
    monkeypatch.setenv(TRUST_ENV, "0")  # restored afterwards even when the CLI sets it to 1


def kdcore(*args: str, home: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    paths = [str(pythonpath)] if pythonpath else []
    env = {**os.environ, "KDAUDIT_HOME": str(home), "OMP_NUM_THREADS": "1", TRUST_ENV: "0"}
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "kdcore", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _audit_args(files: dict, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "audit",
        *("--model", str(model), "--unlabeled", str(files["unlabeled"]), "--train", str(files["train"])),
        *("--test", str(files["test"]), "--trigger", "badnets:target=7,size=2,margin=0", "--max-unlabeled", "200"),
        "--no-verdict",
        *("--kd-epochs", "1", "--ft-epochs", "1", "--device", "cpu", "--out", str(out), "--no-progress"),
        *extra,
    ]


def _weights(path: Path, builder, shape=(1, 8, 8)) -> Path:
    torch.manual_seed(0)
    safetensors.torch.save_file(builder(num_classes=10, input_shape=shape).state_dict(), path)
    return path


# --- plugins ------------------------------------------------------------------------------------


def test_installed_plugin_is_an_architecture_name(installed):
    assert "tiny-plugin" in plugin_names() and "tiny-plugin" in arch_names()
    model = build_model(ModelSpec("tiny-plugin", 10, (1, 8, 8), extra={"width": 6}))
    assert model.features[0].out_channels == 6 and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_broken_plugin_names_itself(installed):
    with pytest.raises(ConfigError, match=r"plugin 'broken-plugin' \(kdplug_test.missing:Net\) cannot be imported"):
        build_model(ModelSpec("broken-plugin", 10, (1, 8, 8)))


def test_without_the_package_the_name_is_unknown():
    assert "tiny-plugin" not in plugin_names()
    with pytest.raises(ConfigError, match="Unknown architecture 'tiny-plugin'"):
        build_model(ModelSpec("tiny-plugin", 10, (1, 8, 8)))


def test_cli_in_another_process_audits_a_plugin_model(digits_files, site, tmp_path):
    sys.path.insert(0, str(site))
    try:
        import kdplug_test

        model = _weights(tmp_path / "m.safetensors", kdplug_test.TinyNet)
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("kdplug_test", None)
    out = tmp_path / "run"
    flags = ("--arch", "tiny-plugin", "--num-classes", "10", "--input-shape", "1,8,8")
    r = kdcore(*_audit_args(digits_files, model, out, *flags), home=tmp_path, pythonpath=site)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["spec"]["arch"] == "tiny-plugin"
    assert {"teacher", "student", "finetuned", "detox"} <= set(report)
    # without the package on its path, the same command is one line naming what is installed
    r = kdcore(*_audit_args(digits_files, model, tmp_path / "run2", *flags), home=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "Unknown architecture 'tiny-plugin'" in r.stderr and "paper-cnn" in r.stderr


# --- --arch-file --------------------------------------------------------------------------------


@pytest.fixture
def arch_file(tmp_path) -> Path:
    path = tmp_path / "model.py"
    path.write_text(MODEL_CODE)
    return path


def _file_config(files: dict, model: Path, arch_file: Path, **kw) -> AuditConfig:
    d = {"model": str(model), "unlabeled": str(files["unlabeled"]), "arch_file": f"{arch_file}:TinyNet"}
    d.update({"num_classes": 10, "input_shape": (1, 8, 8), "device": "cpu"}, **kw)
    return from_dict(AuditConfig, d)


def _load_tinynet(arch_file: Path):
    ns: dict = {}
    exec(compile(arch_file.read_text(), str(arch_file), "exec"), ns)
    return ns


def test_arch_file_without_trust_is_refused_before_anything_runs(digits_files, arch_file, tmp_path, untrusted, capsys):
    model = _weights(tmp_path / "m.safetensors", _load_tinynet(arch_file)["TinyNet"])
    cfg = _file_config(digits_files, model, arch_file)
    with pytest.raises(
        ConfigError, match=r"file:TinyNet is defined in a Python file.*--trust-code.*KDAUDIT_TRUST_CODE"
    ):
        cfg.check_inputs()
    args = ["audit", "--model", str(model), "--unlabeled", str(digits_files["unlabeled"]), "--out", str(tmp_path)]
    assert main([*args, "--arch-file", f"{arch_file}:TinyNet", "--num-classes", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--trust-code" in err[0] and "entry point group kdaudit.architectures" in err[0]
    assert not (tmp_path / "report.json").exists()


def test_arch_file_records_the_file_and_refuses_it_once_changed(digits_files, arch_file, tmp_path, monkeypatch):
    monkeypatch.setenv(TRUST_ENV, "1")
    model = _weights(tmp_path / "m.safetensors", _load_tinynet(arch_file)["TinyNet"])
    cfg = _file_config(digits_files, model, arch_file, arch_kwargs={"width": 4})
    cfg.check_inputs()
    spec = cfg.model_spec()
    assert spec.arch == "file:TinyNet" and spec.source == str(arch_file.resolve())
    assert spec.source_sha256 == cfg.arch_file_sha256 and len(spec.source_sha256) == 64
    assert spec.extra == {"width": 4}
    assert build_model(spec)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    # what a queued job holds is the config as a dict: it still pins the checked file
    queued = from_dict(AuditConfig, json.loads(json.dumps(dataclasses_dict(cfg))))
    arch_file.write_text(MODEL_CODE + "\nprint('changed')\n")
    with pytest.raises(InputError, match=r"model.py changed since this config was made"):
        queued.check_inputs()  # what a worker does first
    with pytest.raises(ConfigError, match=r"model.py changed since this model was read from it"):
        build_model(queued.model_spec())


def dataclasses_dict(cfg: AuditConfig) -> dict:
    from kdcore.config import to_dict

    return to_dict(cfg)


def test_arch_file_needs_num_classes_and_a_file_py_class(digits_files, arch_file, tmp_path):
    base = {"model": "m.pt", "unlabeled": "u"}
    with pytest.raises(ConfigError, match="--arch-file needs --num-classes"):
        from_dict(AuditConfig, {**base, "arch_file": f"{arch_file}:TinyNet"})
    with pytest.raises(ConfigError, match=r"--arch-file takes FILE.py:ClassName"):
        from_dict(AuditConfig, {**base, "arch_file": "model.py", "num_classes": 10})
    with pytest.raises(ConfigError, match="not both"):
        from_dict(AuditConfig, {**base, "arch": "paper-cnn", "arch_file": f"{arch_file}:TinyNet", "num_classes": 10})
    with pytest.raises(ConfigError, match="--arch-kwargs go with --arch or --arch-file"):
        from_dict(AuditConfig, {**base, "arch_kwargs": {"width": 2}})


def test_missing_arch_file_is_an_input_error(monkeypatch, tmp_path):
    monkeypatch.setenv(TRUST_ENV, "1")
    cfg = from_dict(AuditConfig, {"model": str(tmp_path), "unlabeled": str(tmp_path), "num_classes": 10,
                                  "arch_file": f"{tmp_path / 'gone.py'}:Net"})  # fmt: skip
    with pytest.raises(InputError, match=r"--arch-file .*gone.py does not exist"):
        cfg.check_inputs()


def test_cli_trust_code_audits_an_arch_file_model_in_another_process(digits_files, arch_file, tmp_path):
    model = _weights(tmp_path / "m.safetensors", _load_tinynet(arch_file)["TinyNet"])
    out = tmp_path / "run"
    extra = ("--arch-file", f"{arch_file}:TinyNet", "--num-classes", "10", "--input-shape", "1,8,8")
    r = kdcore(*_audit_args(digits_files, model, out, *extra, "--arch-kwargs", '{"width": 4}', "--trust-code"),
               home=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["arch_file"] == f"{arch_file.resolve()}:TinyNet" and len(config["arch_file_sha256"]) == 64
    assert config["arch_kwargs"] == {"width": 4}
    spec = json.loads((out / "report.json").read_text())["model"]["spec"]
    assert spec["arch"] == "file:TinyNet" and spec["source_sha256"] == config["arch_file_sha256"]


def test_trust_code_is_a_flag_of_audit_defend_and_worker_and_never_a_setting():
    from kdcore.cli import build_parser

    parser = build_parser()
    for argv in (["audit", "--model", "m", "--unlabeled", "u"], ["defend", "bcu"], ["worker"]):
        assert parser.parse_args([*argv, "--trust-code"]).trust_code
    assert "trust_code" not in {f for f in AuditConfig.__dataclass_fields__}
    assert plugins.trusted() is (os.environ.get(TRUST_ENV) == "1")


def test_trust_is_the_machines_a_worker_without_it_refuses_a_queued_arch_file_job(digits_files, arch_file, tmp_path):
    from kdcore.jobs.store import JobStore

    model = _weights(tmp_path / "m.safetensors", _load_tinynet(arch_file)["TinyNet"])
    store_dir = tmp_path / "store"
    args = _audit_args(digits_files, model, tmp_path / "run", "--arch-file", f"{arch_file}:TinyNet")
    args += ["--num-classes", "10", "--input-shape", "1,8,8", "--data-dir", str(store_dir)]
    r = kdcore("jobs", "submit", *args, home=tmp_path)
    assert r.returncode == 2 and "--trust-code" in r.stderr  # checked before it is queued
    r = kdcore("jobs", "submit", *args, "--trust-code", home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    job = JobStore(store_dir).get(int(r.stdout.strip()))
    assert len(job.config["arch_file_sha256"]) == 64
    r = kdcore("worker", "--once", "--data-dir", str(store_dir), home=tmp_path)  # no trust on this machine
    job = JobStore(store_dir).get(job.id)
    assert job.state == "failed" and "--trust-code" in job.error and "KDAUDIT_TRUST_CODE=1" in job.error
    assert not (tmp_path / "run" / "report.json").exists()
