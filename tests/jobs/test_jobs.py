"""The job system with real worker processes running real (tiny) audits on sklearn digits."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kdcore.errors import ConfigError, InputError
from kdcore.jobs.store import STATES, JobStore
from tests.conftest import audit_config

ROOT = Path(__file__).resolve().parents[2]


def start_worker(data_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kdcore", "worker", "--data-dir", str(data_dir), "--device", "cpu", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdcore", "jobs", *args, "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for(pred, timeout: float, what: str, poll: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_submit_then_worker_once_succeeds_and_show_points_at_report(digits_files, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdcore",
            "jobs",
            "submit",
            "audit",
            "--model",
            str(digits_files["model"]),
            "--unlabeled",
            str(digits_files["unlabeled"]),
            "--test",
            str(digits_files["test"]),
            "--device",
            "cpu",
            "--kd-epochs",
            "2",
            "--json",
            "--label",
            "cli",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]
    w = start_worker(tmp_path, "--once")
    assert w.wait(timeout=120) == 0, w.stdout.read()
    shown = json.loads(cli(tmp_path, "show", str(job_id), "--json").stdout)
    assert shown["state"] == "succeeded" and shown["label"] == "cli" and shown["error"] == ""
    report = json.loads(Path(shown["report_path"]).read_text())
    assert report["teacher"]["clean_acc"] > 0.5 and report["student"]["clean_acc"] is not None
    listed = json.loads(cli(tmp_path, "list", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
    logs = cli(tmp_path, "logs", str(job_id), "--tail", "5")
    assert logs.returncode == 0 and "stage" in logs.stdout


def test_cancel_stops_a_running_job_and_keeps_finished_stages(digits_files, tmp_path):
    store = JobStore(tmp_path)
    job = store.submit("audit", audit_config(digits_files, kd_epochs=2, ft_epochs=5000))
    w = start_worker(tmp_path, "--once")
    try:
        wait_for(lambda: store.get(job.id).stage == "finetune", 120, "the finetune stage")
        store.cancel(job.id)
        # 5000 fine-tuning epochs take far longer than this wait: ending at all shows the cancel stopped it
        done = wait_for(lambda: (j := store.get(job.id)).terminal and j, 120, "cancellation")
        assert done.state == "cancelled" and "cancelled" in done.error
        assert w.wait(timeout=20) == 0
    finally:
        w.kill()
    stages = Path(job.run_dir) / "stages"
    assert any(p.name.startswith("distill-") and (p / "stage.json").exists() for p in stages.iterdir())
    assert not any(p.name.startswith("finetune-") for p in stages.iterdir())  # unfinished: not kept as done
    assert not any(p.name.startswith(".") for p in stages.iterdir())  # temp folder cleaned up


def test_sigkill_marks_interrupted_and_retry_reuses_finished_stages(digits_files, tmp_path):
    store = JobStore(tmp_path)
    job = store.submit("audit", audit_config(digits_files, kd_epochs=3, ft_epochs=3000))
    w = start_worker(tmp_path)
    wait_for(lambda: store.get(job.id).stage == "finetune", 120, "the finetune stage")
    distill_done = next((Path(job.run_dir) / "stages").glob("distill-*/stage.json"))
    mtime = distill_done.stat().st_mtime_ns
    os.kill(w.pid, signal.SIGKILL)
    w.wait(timeout=10)
    # A restarted worker finds the orphan at start-up and reports it.
    w2 = start_worker(tmp_path, "--once")
    out, _ = w2.communicate(timeout=60)
    j = store.get(job.id)
    assert j.state == "interrupted" and "died" in j.error and "finetune" in j.error, j.error
    assert f"job {job.id} was orphaned" in out
    # Retry: a new job in the same run directory; make the fine-tuning short this time.
    new = store.retry(job.id)
    assert new.parent_id == job.id and new.run_dir == job.run_dir and new.state == "queued"
    with sqlite3.connect(store.path) as c:  # shorten the fine-tuning of the retried job only
        cfg = new.config
        cfg["kd"]["finetune"]["epochs"] = 2
        c.execute("UPDATE jobs SET config=? WHERE id=?", (json.dumps(cfg), new.id))
    w3 = start_worker(tmp_path, "--once")
    assert w3.wait(timeout=120) == 0
    done = store.get(new.id)
    assert done.state == "succeeded", done.error
    report = json.loads(done.report_path.read_text())
    assert report["stages"]["distill"]["reused"] is True
    assert report["stages"]["finetune"]["reused"] is False
    assert distill_done.stat().st_mtime_ns == mtime  # the distillation did not run again


def test_twenty_jobs_two_workers_all_succeed_once_while_a_reader_polls(digits_files, tmp_path):
    store = JobStore(tmp_path)
    ids = [
        store.submit("audit", audit_config(digits_files, kd_epochs=1, train=False, max_unlabeled=100, seed=i)).id
        for i in range(20)
    ]
    errors, polls = [], [0]
    stop = threading.Event()

    def reader():
        rs = JobStore(tmp_path)
        while not stop.is_set():
            try:
                for j in rs.list():
                    assert j.state in STATES and isinstance(j.config, dict) and j.config["model"]
                    assert 0 <= j.step <= max(j.total, j.step)
                rs.get(ids[polls[0] % len(ids)])
                polls[0] += 1
            except Exception as e:  # any error or torn row fails the test
                errors.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    workers = [start_worker(tmp_path, "--drain") for _ in range(2)]
    try:
        outs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        stop.set()
        t.join()
        for w in workers:
            w.kill()
    assert not errors, errors[:3]
    assert polls[0] > 20
    jobs = [store.get(i) for i in ids]
    assert [j.state for j in jobs] == ["succeeded"] * 20, [(j.id, j.state, j.error[-200:]) for j in jobs]
    runs = [line for out in outs for line in out.splitlines() if "running job" in line]
    started = sorted(int(line.split("running job ")[1].split()[0]) for line in runs)
    assert started == sorted(ids)  # every job ran exactly once
    assert len({j.worker_pid for j in jobs}) == 2  # both workers took part


def test_invalid_configs_are_refused_at_submit_and_never_queued(digits_files, tmp_path):
    store = JobStore(tmp_path)
    with pytest.raises(ConfigError, match="Unknown job kind"):
        store.submit("mystery", {})
    with pytest.raises(ConfigError, match="Unknown key"):
        store.submit("demo", {"n_train": 1000, "colour": "red"})
    with pytest.raises(ConfigError, match="n_clean"):
        store.submit("demo", {"n_clean": 10**6})
    with pytest.raises(InputError, match="does not exist"):
        store.submit("audit", audit_config(digits_files) | {"train": str(tmp_path / "missing.zip")})
    with pytest.raises(ConfigError, match="temperature"):
        store.submit("audit", audit_config(digits_files) | {"kd": {"distill": {"temperature": -1}}})
    assert store.list() == []
    r = cli(tmp_path, "submit", "demo", "--n-clean", "999999")
    assert r.returncode == 2 and r.stderr.startswith("kdcore: error:") and "n_clean" in r.stderr


def test_stale_heartbeat_from_another_host_is_interrupted(digits_files, tmp_path):
    store = JobStore(tmp_path)
    job = store.submit("audit", audit_config(digits_files))
    claimed = store.claim("cpu", pid=999_999)
    assert claimed.id == job.id and claimed.state == "running"
    assert store.claim("cpu", pid=1) is None  # nothing else queued
    with sqlite3.connect(store.path) as c:
        c.execute("UPDATE jobs SET worker_host='elsewhere', heartbeat_at=? WHERE id=?", (time.time() - 100, job.id))
    assert store.reap(stale_after=120) == []  # not stale yet
    [marked] = store.reap(stale_after=30)
    assert marked.state == "interrupted" and "no heartbeat" in marked.error and socket.gethostname() not in marked.error


def test_cancel_queued_job_and_refuse_bad_transitions(digits_files, tmp_path):
    store = JobStore(tmp_path)
    job = store.submit("audit", audit_config(digits_files))
    assert store.cancel(job.id).state == "cancelled"
    with pytest.raises(InputError, match="only queued or running"):
        store.cancel(job.id)
    assert store.retry(job.id).parent_id == job.id
    with pytest.raises(InputError, match="No job"):
        store.get(12345)


def test_one_job_per_gpu_at_a_time(digits_files, tmp_path):
    store = JobStore(tmp_path)
    a = store.submit("audit", audit_config(digits_files))
    b = store.submit("audit", audit_config(digits_files))
    assert store.claim("cuda:0", pid=os.getpid()).id == a.id
    assert store.claim("cuda:0", pid=os.getpid()) is None  # the GPU is busy
    assert store.claim("cuda:1", pid=os.getpid()).id == b.id
