"""Two nodes in one convention: /v1/status on a member shows the whole cluster, /metrics only that node."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from actors.ops.http_process import start_http
from actors.settings.loader import build
from actors.settings.schema import HttpConfig

from conftest import deployment, free_port, fresh_window_s, wait_for

FAST_CLUSTER = {"heartbeat_s": 0.5, "failure_timeout_s": 3.0, "reregistration_s": 2}
HI = [{"role": "user", "content": "hi"}]


def test_status_from_a_member_covers_the_cluster_and_metrics_its_node(gateway, mock, tmp_path):
    deps = [deployment(mock.url, "d1", workers=1, limits={"rpm": 1000, "window_s": fresh_window_s()})]
    leader_port = free_port()
    leader, leader_client = gateway(deps, name="n0", port=leader_port, cluster=FAST_CLUSTER)
    member, member_client = gateway(deps, name="n1", cluster=FAST_CLUSTER, leader=f"127.0.0.1:{leader_port}")
    wait_for(lambda: len(leader_client.cluster_status(members_only=True).members) == 2, timeout_s=20,
             message="2 members")
    for _ in range(2):
        leader_client.complete("d1", HI, max_tokens=2)
    member_client.complete("d1", HI, max_tokens=2)
    http = start_http(build(HttpConfig, {"listen": "127.0.0.1:0", "auth": "none"}, "http"), member.admin_port,
                      models=["d1"], log_file=str(tmp_path / "http.log"))
    try:
        def whole():
            doc = requests.get(http.url + "/v1/status", timeout=10).json()
            budget = doc["budgets"][0]["requests"] if doc["budgets"] else 0
            return doc if len(doc["nodes"]) == 2 and budget == 3 else None
        doc = wait_for(whole, timeout_s=15, message="both nodes and the merged budget")
        assert doc["leader"] == "n0"
        assert sorted((n["node"], n["leader"]) for n in doc["nodes"]) == [("n0", True), ("n1", False)]
        assert all(n["heartbeat_age_s"] is not None and n["heartbeat_age_s"] < 5 for n in doc["nodes"])
        (row,) = doc["deployments"]
        assert (row["deployment"], row["replicas"], row["completed"]) == ("d1", 2, 3)
        assert len(row["nodes"]) == 2
        text = requests.get(http.url + "/metrics", timeout=10).text
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        completed = [s for s in samples if s.name == "atomr_requests_total" and s.labels["outcome"] == "completed"]
        assert [(s.labels["node"].split("@")[0], s.value) for s in completed] == [("n1", 1)]   # this node only
        assert [s.value for s in samples if s.name == "atomr_budget_requests_used"] == [3]    # the cluster's use
        assert [s.value for s in samples if s.name == "atomr_cluster_members"] == [2]
        ages = {s.labels["member"].split("@")[0] for s in samples
                if s.name == "atomr_cluster_member_heartbeat_age_seconds"}
        assert ages == {"n0", "n1"}
    finally:
        http.stop(timeout_s=10)
