"""kdcore.sandbox.confine: a sandbox child reads only its inputs and Python, writes only its temp
folder and opens no socket; on a kernel without Landlock it reads all the same and says so.

The refusals are asserted where `sandbox.confinement()` says the kernel offers them, and the degraded
status where it does not; `test_the_status_is_what_the_kernel_offers` pins that status to the kernel,
asked here without kdcore's code, so a confinement that stopped working cannot pass as "degraded".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from kdcore import sandbox
from kdcore.errors import InputError
from kdcore.models.loading import save_model
from kdcore.models.registry import build_model
from kdcore.models.sources import with_source
from kdcore.models.spec import ModelSpec
from kdcore.sandbox import Confinement

SMALL = sandbox.Budget(memory_bytes=300 * 2**20, cpu_s=4, timeout_s=20)
R = "tests.sandbox_readers:"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _server():
    sandbox.prestart()


def kernel_landlock_abi() -> int:
    """landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION), asked directly (x86-64 / arm64: 444)."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(abi, 0)


@pytest.fixture()
def secret(tmp_path_factory) -> Path:
    """Another user's file: a key in a ~/.ssh-like folder, outside every input and temp folder."""
    d = tmp_path_factory.mktemp("home") / ".ssh"
    d.mkdir()
    (d / "id_ed25519").write_text("PRIVATE KEY")
    return d / "id_ed25519"


def test_the_status_is_what_the_kernel_offers():
    abi = kernel_landlock_abi()
    got = sandbox.confinement()
    assert got.landlock_abi == abi and got.files == (abi >= 1)
    seccomp = ctypes.util.find_library("seccomp") is not None
    assert got.network == (seccomp or abi >= 4)
    assert (got.note == "") == (got.files and got.network)
    assert got.summary == ("file and network access restricted" if got.files and got.network else got.note)


def test_the_degraded_status_says_what_is_missing_in_plain_words():
    assert Confinement(True, True, 7).note == ""
    assert "could not restrict file and network access on this kernel" in Confinement(False, False, 0).note
    assert "could not restrict file access on this kernel" in Confinement(False, True, 0).note
    assert "could not restrict network access on this kernel" in Confinement(True, False, 3).note


def test_a_child_reads_its_inputs_but_no_file_outside_them(secret, tmp_path):
    upload = tmp_path / "upload.txt"
    upload.write_text("the upload")
    assert sandbox.run(R + "read_file", (str(upload),), SMALL, reads=(upload,)) == "the upload"
    assert sandbox.run(R + "list_folder", (str(tmp_path),), SMALL, reads=(tmp_path,)) == ["upload.txt"]
    outside = [
        (R + "read_file", (str(secret),)),  # another folder's file
        (R + "list_folder", (str(secret.parent),)),
        (R + "read_file", (str(upload),)),  # an input of another call
        (R + "write_file", (str(tmp_path / "planted.txt"), "x")),  # a write outside its temp folder
    ]
    if sandbox.confinement().files:
        for target, args in outside:
            with pytest.raises(InputError, match="it tried to open a file outside its upload, which the sandbox"):
                sandbox.run(target, args, SMALL, name="evil.pt")
        assert not (tmp_path / "planted.txt").exists()
        # its own temp folder stays writable: relative paths land there
        assert Path(sandbox.run(R + "write_file", ("mine.txt", "x"), SMALL)).name == "mine.txt"
    else:  # no Landlock: the child reads it, and the status says so
        assert sandbox.run(R + "read_file", (str(secret),), SMALL) == "PRIVATE KEY"
        assert "could not restrict file" in sandbox.confinement().note


def test_a_child_opens_no_connection_to_loopback():
    with socket.socket() as listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        calls = [(R + "connect", listener.getsockname()[1]), (R + "send_udp", udp.getsockname()[1])]
        if sandbox.confinement().network:
            for target, port in calls:
                with pytest.raises(InputError, match="it tried to open a network connection, which the sandbox"):
                    sandbox.run(target, (port,), SMALL, name="evil.onnx")
            with pytest.raises(BlockingIOError):
                listener.accept()  # nobody came
            with pytest.raises(BlockingIOError):
                udp.recv(16)
        else:  # neither libseccomp nor Landlock's TCP rules: the child connects, and the status says so
            assert sandbox.run(R + "connect", (listener.getsockname()[1],), SMALL) == "connected"
            assert "could not restrict" in sandbox.confinement().note and "network" in sandbox.confinement().note


NET_PY = """
from torch import nn
class Net(nn.Sequential):
    def __init__(self, num_classes):
        super().__init__(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, num_classes))
"""


def test_what_a_model_reader_needs_besides_the_file_is_readable(tmp_path, monkeypatch):
    """The spec saved beside a state_dict (`<stem>.json`), and a `file:<Class>` architecture's Python
    file in another folder: the reads the parent names for a model (`runner.model_inputs`)."""
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28))
    torch.save(build_model(spec).state_dict(), tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps(spec.to_dict()))
    assert sandbox.read_spec(tmp_path / "m.pt") == spec
    monkeypatch.setenv("KDAUDIT_TRUST_CODE", "1")
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "net.py").write_text(NET_PY)
    net = with_source(ModelSpec("file:Net", 3, (1, 8, 8)), tmp_path / "arch" / "net.py")
    torch.manual_seed(0)
    weights = tmp_path / "w" / "net.safetensors"
    weights.parent.mkdir()
    safetensors.torch.save_file(build_model(net).state_dict(), weights)
    got, parameters, _ = sandbox.check_model(weights, net)
    assert got == net and parameters == 2 * 9 + 2 + 72 * 3 + 3


_NO_LANDLOCK = """
import errno, json, logging, pyseccomp
f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)  # this process and its children: a kernel without Landlock
for call in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
    f.add_rule(pyseccomp.ERRNO(errno.ENOSYS), call)
f.load()
import sys
from kdcore import sandbox
from app.uploads import check_model
records = []
handler = logging.Handler()
handler.emit = lambda r: records.append((r.levelname, r.getMessage()))
logging.getLogger("kdcore").addHandler(handler)
logging.getLogger("kdcore").setLevel(logging.INFO)
model, secret = sys.argv[1:3]
check = check_model(model, None)
read = sandbox.run("tests.sandbox_readers:read_file", (secret,))
print(json.dumps({"files": sandbox.confinement().files, "note": check.sandbox_note,
                  "classes": check.output_classes, "read": read, "log": records}))
"""


def test_without_landlock_the_model_check_and_the_log_say_so_and_reading_works(tmp_path, secret):
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28))
    path = save_model(build_model(spec), spec, tmp_path / "m.safetensors")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _NO_LANDLOCK, str(path), str(secret)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["files"] is False and got["classes"] == 10  # degraded, not failed
    assert got["note"].startswith("the parsing sandbox could not restrict file access on this kernel")
    assert got["read"] == "PRIVATE KEY"  # the note is true: the child could read it
    warnings = [m for level, m in got["log"] if level == "WARNING" and m.startswith("sandbox: ")]
    assert len(warnings) == 2 and all("could not restrict file access on this kernel" in m for m in warnings)


def test_the_log_line_says_the_child_was_confined(tmp_path, caplog):
    spec = ModelSpec("paper-cnn", 10, (1, 28, 28))
    path = save_model(build_model(spec), spec, tmp_path / "m.safetensors")
    with caplog.at_level(logging.INFO, logger="kdcore"):
        sandbox.read_spec(path)
    (line,) = [r for r in caplog.records if r.getMessage().startswith("sandbox: m.safetensors")]
    assert sandbox.confinement().summary in line.getMessage()
    assert line.levelno == (logging.INFO if not sandbox.confinement().note else logging.WARNING)


def test_the_child_temp_files_stay_in_its_folder(tmp_path, monkeypatch):
    t = tmp_path / "t"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    made = sandbox.run(R + "temp_file", (), SMALL)
    assert Path(made).parent.parent == t  # in the call's own temp folder, the one it may write …
    assert list(t.iterdir()) == []  # … which is gone, with everything in it


_PATH_FOLDER = """
import sys
from kdcore import sandbox
folder = sys.argv[1]
print(sandbox.run("tests.sandbox_readers:read_file", (folder + "/plug/__init__.py",)))
try:
    sandbox.run("tests.sandbox_readers:read_file", (folder + "/kdaudit-data/upload.pt",))
except Exception as e:
    print(type(e).__name__, e)
"""


def test_a_folder_on_the_python_path_is_importable_but_a_data_folder_beside_it_is_not(tmp_path):
    """The repository kdcore runs from is on the path, and `./kdaudit-data` is its default data folder."""
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "__init__.py").write_text("X = 1\n")
    (tmp_path / "kdaudit-data").mkdir()
    (tmp_path / "kdaudit-data" / "upload.pt").write_text("someone else's model")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    out = subprocess.run(
        [sys.executable, "-c", _PATH_FOLDER, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line]
    assert lines[0] == "X = 1"
    if sandbox.confinement().files:
        assert lines[1].startswith("InputError") and "outside its upload" in lines[1]
    else:
        assert lines[1] == "someone else's model"
