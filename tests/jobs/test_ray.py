"""The Ray executor on a real two-node cluster on this machine (`ray.cluster_utils.Cluster`): real
tiny audits on sklearn digits, dispatched by `kdcore worker --executor ray` in its own process."""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

from kdcore.jobs.store import JobStore
from tests.conftest import TINY_DEMO, audit_config
from tests.jobs.test_jobs import wait_for

ROOT = Path(__file__).resolve().parents[2]
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={**NODE, "resources": {"node_a": 1}})
    c.add_node(**NODE, resources={"node_b": 1})
    c.wait_for_nodes()
    yield c
    c.shutdown()


def dispatcher(data_dir: Path, address: str, *args: str) -> subprocess.Popen:
    ray_args = ("--executor", "ray", "--ray-address", address)
    return subprocess.Popen(
        [sys.executable, "-m", "kdcore", "worker", *ray_args, "--data-dir", str(data_dir), "--device", "cpu", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_four_jobs_on_two_nodes_each_run_once(cluster, digits_files, tmp_path):
    store = JobStore(tmp_path)
    ids = [
        store.submit("audit", audit_config(digits_files, kd_epochs=1, train=False, max_unlabeled=100, seed=i)).id
        for i in range(4)
    ]
    d = dispatcher(tmp_path, cluster.address, "--drain")
    out, _ = d.communicate(timeout=400)
    assert d.returncode == 0, out
    jobs = [store.get(i) for i in ids]
    assert all(j.state == "succeeded" for j in jobs), [(j.id, j.state, j.error) for j in jobs]
    for j in jobs:
        assert out.count(f"dispatching job {j.id} ") == 1, out  # each ran exactly once
        report = json.loads(j.report_path.read_text())
        assert not any(s["reused"] for s in report["stages"].values())
        assert j.device == "cpu" and j.worker_pid != d.pid
    nodes = {j.node.split()[-1] for j in jobs}
    assert nodes == {"node_a", "node_b"}, [j.node for j in jobs]  # both nodes ran jobs
    assert not (tmp_path / "ray-cluster.json").exists()  # the dispatcher's status ends with it


def test_a_lost_node_interrupts_its_job_and_retry_reuses_stages(cluster, digits_files, tmp_path):
    store = JobStore(tmp_path)
    job = store.submit("audit", audit_config(digits_files, kd_epochs=3, ft_epochs=3000))
    # node_b only (the head node cannot be removed without stopping the cluster)
    d = dispatcher(tmp_path, cluster.address, "--drain", "--ray-resource", "node_b=1")
    try:
        wait_for(lambda: store.get(job.id).stage == "finetune", 180, "the finetune stage", poll=0.2)
        status = json.loads((tmp_path / "ray-cluster.json").read_text())
        assert {"node_a", "node_b"} <= {n["node"].split()[-1] for n in status["nodes"]}
        assert status["total"]["CPU"] == 2
        assert store.get(job.id).node.endswith("node_b")
        distill_done = next((Path(job.run_dir) / "stages").glob("distill-*/stage.json"))
        mtime = distill_done.stat().st_mtime_ns
        (node_b,) = cluster.worker_nodes  # the head is not among them
        cluster.remove_node(node_b)
        j = wait_for(lambda: (j := store.get(job.id)).terminal and j, 120, "the job to end", poll=0.5)
        assert j.state == "interrupted" and "lost" in j.error and "retry" in j.error, j.error
        cluster.add_node(**NODE, resources={"node_b": 1})
        cluster.wait_for_nodes()
        new = store.retry(job.id)
        with sqlite3.connect(store.path) as c:  # shorten the fine-tuning of the retried job only
            cfg = new.config
            cfg["kd"]["finetune"]["epochs"] = 2
            c.execute("UPDATE jobs SET config=? WHERE id=?", (json.dumps(cfg), new.id))
        done = wait_for(lambda: (j := store.get(new.id)).terminal and j, 180, "the retried job", poll=0.5)
    finally:
        d.terminate()
        out, _ = d.communicate(timeout=60)
    assert done.state == "succeeded", (done.error, out)
    assert done.node.endswith("node_b")
    report = json.loads(done.report_path.read_text())
    assert report["stages"]["distill"]["reused"] is True
    assert report["stages"]["finetune"]["reused"] is False
    assert distill_done.stat().st_mtime_ns == mtime  # the distillation did not run again


def test_cancel_reaches_a_job_running_on_a_node(cluster, digits_files, tmp_path):
    store = JobStore(tmp_path)
    job = store.submit("audit", audit_config(digits_files, kd_epochs=3, ft_epochs=3000))
    d = dispatcher(tmp_path, cluster.address, "--drain")
    try:
        wait_for(lambda: store.get(job.id).stage == "finetune", 180, "the finetune stage", poll=0.2)
        store.cancel(job.id)
        # 3000 fine-tuning epochs take far longer than this wait: ending at all shows the cancel reached it
        done = wait_for(lambda: (j := store.get(job.id)).terminal and j, 120, "the cancel", poll=0.2)
        assert done.state == "cancelled" and done.node, done.error
    finally:
        out, _ = d.communicate(timeout=120)
    assert d.returncode == 0, out
    stages = Path(job.run_dir) / "stages"
    assert any(p.name.startswith("distill-") for p in stages.iterdir())  # finished stages are kept
    assert not any(p.name.startswith("finetune-") for p in stages.iterdir())


def test_a_sweep_over_three_seeds_fans_out_and_reports_mean_and_spread(cluster, tmp_path):
    store = JobStore(tmp_path)
    setup = {**TINY_DEMO, "cache_dir": str(tmp_path / "cache")}
    sweep = store.submit("sweep", {"setup": setup, "budgets": [30], "scenarios": ["attack"], "seeds": [0, 1, 2]})
    parts = store.group(sweep.id)
    assert sweep.config["gather"] and [p.config["seeds"] for p in parts] == [[0], [1], [2]]
    d = dispatcher(tmp_path, cluster.address, "--drain")
    out, _ = d.communicate(timeout=600)
    done = store.get(sweep.id)
    assert done.state == "succeeded", (done.error, out)
    parts = store.group(sweep.id)
    assert all(p.state == "succeeded" and p.node for p in parts), [(p.id, p.state, p.error) for p in parts]
    assert {p.node.split()[-1] for p in parts} == {"node_a", "node_b"}  # the parts ran side by side
    report = json.loads(done.report_path.read_text())
    assert sorted({r["seed"] for r in report["rows"]}) == [0, 1, 2]
    student = next(r for r in report["summary"] if r["model"] == "student" and r["budget"] == 30)
    per_seed = [r["clean_acc"] for r in report["rows"] if r["model"] == "student"]
    assert student["n"] == 3 and student["clean_acc_mean"] == pytest.approx(sum(per_seed) / 3)
    assert student["clean_acc_std"] == pytest.approx(statistics.stdev(per_seed))
    assert "Mean ± standard deviation over 3 seeds" in report["table"] and " ± " in report["table"]


def test_an_audit_of_many_models_fans_out_on_the_cluster_and_gathers_one_table(
    cluster, digits_models, digits_files, tmp_path
):
    store = JobStore(tmp_path)
    shared = {
        "unlabeled": str(digits_files["unlabeled"]),
        "test": str(digits_files["test"]),
        "max_unlabeled": 200,
        "kd": {"distill": {"epochs": 1}, "finetune": {"epochs": 1}},
        "neural_cleanse": {"steps": 20, "n_images": 64, "n_holdout": 32, "batch_size": 16},
    }
    models = sorted(str(p) for p in digits_models.glob("*.safetensors"))
    job = store.submit("audit_many", {"models": models, "audit": shared})
    assert [p.kind for p in store.group(job.id)] == ["audit"] * 3
    d = dispatcher(tmp_path, cluster.address, "--drain")
    out, _ = d.communicate(timeout=600)
    done = store.get(job.id)
    assert done.state == "succeeded", (done.error, out)
    parts = store.group(job.id)
    assert all(p.state == "succeeded" and p.node for p in parts), [(p.id, p.state, p.error) for p in parts]
    assert {p.node.split()[-1] for p in parts} == {"node_a", "node_b"}  # the parts ran side by side
    report = json.loads(done.report_path.read_text())
    assert sorted(r["model"] for r in report["rows"]) == [Path(m).name for m in models]
    assert {r["run_dir"] for r in report["rows"]} == {p.run_dir for p in parts}
    assert all(r["state"] == "succeeded" and r["status"] and r["clean_acc"] for r in report["rows"])
    assert (Path(done.run_dir) / "models.csv").read_text().count("\n") == 4  # a header and three rows
