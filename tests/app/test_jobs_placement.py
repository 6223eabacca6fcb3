"""The Jobs page says where jobs ran: the Ray cluster panel, each job's node, a fan-out's parts."""

from __future__ import annotations

import json
import os
import time

from app.placement import cluster_line, cluster_status, node_short
from kdcore.config import to_dict
from kdcore.jobs.store import JobStore
from kdcore.runs import DemoConfig
from tests.app.conftest import open_page

NODE_A = "127.0.0.1 3f2a1b9c0d1e node_a"
NODE_B = "127.0.0.1 9d8c7b6a5f4e node_b"


def _cluster_file(home, at: float) -> None:
    status = {
        "address": "10.0.0.5:6379",
        "available": {"CPU": 3.0, "GPU": 1.0, "node_a": 1.0},
        "total": {"CPU": 8.0, "GPU": 2.0, "node_a": 1.0, "node_b": 1.0},
        "nodes": [
            {"node": NODE_A, "resources": {"CPU": 4.0, "GPU": 1.0, "node_a": 1.0}},
            {"node": NODE_B, "resources": {"CPU": 4.0, "GPU": 1.0, "node_b": 1.0}},
        ],
        "at": at,
    }
    (home / "ray-cluster.json").write_text(json.dumps(status))


def _fan_out(store: JobStore) -> tuple[int, list[int]]:
    """A demo fan-out of 3 parts: #p1 succeeded on node_b, #p2 running on node_a, #p3 cancelled and retried."""
    demo = [to_dict(DemoConfig.preset(True, seed=s)) for s in range(3)]
    group, parts = store.submit_group("demo", demo[0], [("demo", c, f"seed-{s}") for s, c in enumerate(demo)])
    p1, p2, p3 = (p.id for p in parts)
    for pid, node in ((p1, NODE_B), (p2, NODE_A)):
        assert store.claim("ray:cpu", os.getpid(), job_id=pid) is not None
        store.placed(pid, node, "head", os.getpid(), "cpu")
    store.finish(p1, "succeeded")
    store.cancel(p3)
    retry = store.retry(p3)
    return group.id, [p1, p2, retry.id]


def test_jobs_page_shows_cluster_nodes_and_fan_out_parts(empty_home):
    store = JobStore(empty_home)
    group, (p1, p2, p3) = _fan_out(store)
    _cluster_file(empty_home, time.time())
    at = open_page("jobs")
    assert not at.exception
    bold = [m.value for m in at.markdown]
    assert "**Ray cluster at 10.0.0.5:6379: 2 nodes · free CPU 3 of 8 · GPU 1 of 2**" in bold
    captions = [c.value for c in at.caption]
    assert any(NODE_A in c and NODE_B in c for c in captions), captions
    assert f"🧩 1 of 3 parts done: #{p1} ✅ · #{p2} 🏃 · #{p3} ⏳" in captions, captions  # the retry stands for #p3
    assert f"🌐 node 127.0.0.1 node_b · part of job #{group}" in captions, captions
    assert f"🌐 node 127.0.0.1 node_a · part of job #{group}" in captions, captions
    assert f"part of job #{group}" in captions  # the queued retry: no node yet


def test_no_cluster_panel_without_a_fresh_status_file(empty_home):
    store = JobStore(empty_home)
    _fan_out(store)
    _cluster_file(empty_home, time.time() - 120)  # left behind by a dispatcher that was killed
    assert cluster_status(empty_home) is None
    at = open_page("jobs")
    assert not at.exception
    assert not any("Ray cluster" in m.value for m in at.markdown)
    (empty_home / "ray-cluster.json").write_text("{not json")
    assert cluster_status(empty_home) is None


def test_node_and_cluster_in_short_words():
    assert node_short(NODE_B) == "127.0.0.1 node_b"
    local = {"address": "local", "available": {"CPU": 2.0}, "total": {"CPU": 2.0}, "nodes": [{"node": NODE_A}]}
    assert cluster_line(local) == "Ray cluster on this machine: 1 node · free CPU 2 of 2 · no GPU"
    assert node_short("10.0.0.7 abcdef123456") == "10.0.0.7 abcdef"  # no custom resource: the id's start
    assert node_short("10.0.0.7 abcdef123456 gpu_a100 rack_2") == "10.0.0.7 gpu_a100 rack_2"
