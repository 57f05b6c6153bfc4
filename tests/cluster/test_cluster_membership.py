"""Membership you can trust: a member joins whenever its leader comes up, says whether it is in
the cluster until then, shows the nodes it knows of while the leader is away, and its budgets
outside the cluster follow limits.leader_unavailable (docs/cluster.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from actors import errors as E
from actors.client import GatewayClient
from actors.http.status_view import cluster_document

from conftest import OutputLines, deployment, free_port, fresh_window_s, wait_for

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]
QUICK = {"heartbeat_s": 0.5, "failure_timeout_s": 2.0, "reregistration_s": 2}
# As a node runs in production: Thespian's timers from the node's own config, not the test run's.
LAUNCH_ENV = {k: v for k, v in os.environ.items() if not k.startswith("CONVENTION_")}


def _launch_config(tmp_path: Path, name: str, port: int, window_s: float) -> Path:
    config = {"node": {"admin_port": port, "name": name, "log_file": str(tmp_path / f"{name}.log")},
              "cluster": QUICK, "mock_provider": {"port": 0},
              "deployments": [{"name": "d1", "model": "d1", "provider": "openai", "upstream_model": "mock-gpt",
                               "endpoint": "mock", "workers": 1, "limits": {"rpm": 100, "window_s": window_s}}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(*args: str) -> tuple[subprocess.Popen, OutputLines]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=LAUNCH_ENV)
    return proc, OutputLines(proc)


def _status_cli(port: int) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "status", "--admin-port", str(port)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _stop(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        if proc is not None:
            try:
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)


def test_a_member_started_before_its_leader_says_so_then_joins_once_the_leader_is_up(tmp_path):
    window_s = fresh_window_s()
    leader_port = free_port()
    member_port = free_port()
    member = leader = None
    try:
        member, member_out = _launch("--convention", "member", "--leader", f"127.0.0.1:{leader_port}",
                                     "--config", str(_launch_config(tmp_path, "m1", member_port, window_s)))
        member_out.wait_for(f"serving on admin port {member_port}")
        member_out.wait_for("NOT in the cluster yet (not in cluster: joining")  # said at start-up
        assert "not in cluster: joining" in _status_cli(member_port)
        log = tmp_path / "m1.log"
        wait_for(lambda: "WARNING" in log.read_text() and "not in cluster: joining" in log.read_text(),
                 timeout_s=10, message="the member's WARNING that it is not in the cluster")
        with GatewayClient(member_port, timeout_s=30) as client:
            status = client.status()
            assert not status.in_cluster and status.membership.startswith("not in cluster")
            assert cluster_document(client.cluster_status())["nodes"][0]["in_cluster"] is False
            # Outside, never in it: no share of the budget is known, so nothing is sent.
            with pytest.raises(E.LeaderUnavailable, match="has not been in the cluster since it started"):
                client.complete("d1", HI, max_tokens=2, timeout_s=10)

            leader, leader_out = _launch("--convention", "leader",
                                         "--config", str(_launch_config(tmp_path, "n0", leader_port, window_s)))
            leader_out.wait_for("in the cluster led by n0")
            # Joined by itself: within a few re-registration periods of the leader coming up.
            wait_for(lambda: client.status().in_cluster, timeout_s=15, interval_s=0.2,
                     message="the member to join")
            cluster = client.cluster_status()
            assert cluster.leader == "n0" and [m.node for m in cluster.members] == ["m1", "n0"]
            assert client.complete("d1", HI, max_tokens=2).text
        assert "after" in log.read_text() and "outside it" in log.read_text()  # the INFO line of the join
        assert "m1" in _status_cli(leader_port) and "cluster led by n0: 2 node(s)" in _status_cli(member_port)
    finally:
        _stop(member, leader)


def test_the_launcher_sets_thespians_convention_timers_from_the_config(tmp_path):
    """Thespian reads them when its convention module is imported: before any node of ours does."""
    port = free_port()
    code = f"""
import sys
from actors.ops.system import start_node
from actors.settings.loader import parse_config
config = parse_config({{"node": {{"admin_port": {port}, "name": "t"}}, "cluster": {{"reregistration_s": 4}},
                        "deployments": [{{"name": "d1", "model": "d1", "provider": "openai", "endpoint": "http://127.0.0.1:9/v1"}}]}}, "t")
node = start_node(config, log_file={str(tmp_path / 't.log')!r}, console_log=False)
try:
    from thespian.system.admin import convention
    print(convention.CONVENTION_REREGISTRATION_PERIOD.total_seconds(), convention.CONVENTION_RESTART_PERIOD.total_seconds())
finally:
    node.stop()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=LAUNCH_ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["4.0", "4.0"]  # not Thespian's 442 s (7m22s) and 202 s defaults


@pytest.fixture
def three_nodes(gateway):
    def make(deployments):
        leader_port = free_port()
        nodes = [gateway(deployments, name=f"n{i}", port=leader_port if i == 0 else None, cluster=QUICK,
                         leader=None if i == 0 else f"127.0.0.1:{leader_port}") for i in range(3)]
        wait_for(lambda: len(nodes[0][1].cluster_status(members_only=True).members) == 3, timeout_s=20,
                 message="3 members")
        # And each member has heard so from the leader (its broadcast is on its way when the leader
        # counts the third): a test that then kills the leader asks the members what they know.
        wait_for(lambda: all(len(client.status().peers) == 2 for _, client in nodes), timeout_s=20,
                 message="every node to know the other two")
        return nodes
    return make


def test_during_a_leader_outage_status_lists_the_members_and_budgets_follow_leader_unavailable(three_nodes, gateway,
                                                                                                 mock):
    window_s = fresh_window_s()
    shared = deployment(mock.url, "shared", workers=1, limits={"rpm": 6, "window_s": window_s})  # local_share
    closed = deployment(mock.url, "closed", workers=1,
                        limits={"rpm": 6, "window_s": window_s, "leader_unavailable": "fail"})
    nodes = three_nodes([shared, closed])
    (leader, _), (_, c1), (_, c2) = nodes
    port = leader.admin_port
    leader.kill()
    wait_for(lambda: not c1.status().in_cluster and not c2.status().in_cluster, timeout_s=15, interval_s=0.1,
             message="the members to notice the leader is gone")
    assert c1.status().membership.startswith("not in cluster: leader n0 unreachable")

    # Status from a member: every node it knows of, the leader marked as not answering.
    cluster = c1.cluster_status()
    assert cluster.leader == "" and [m.node for m in cluster.members] == ["n0", "n1", "n2"]
    assert [n.node for n in cluster.nodes] == ["n1", "n2"] and cluster.unreachable == ["n0"]
    rows = {row["node"]: row for row in cluster_document(cluster)["nodes"]}
    assert rows["n0"]["membership"] == "unreachable" and rows["n0"]["heartbeat_age_s"] >= QUICK["failure_timeout_s"]
    assert rows["n1"]["in_cluster"] is False and rows["n2"]["in_cluster"] is False
    out = _status_cli(nodes[1][0].admin_port)
    assert "- n1" in out and "- n2" in out and "- n0: did not answer" in out
    assert "not in cluster: leader n0 unreachable" in out

    # Budgets: "closed" refuses; "shared" admits each node's share (6 / 3 nodes), never the whole
    # budget. Local first (routing.cross_node: prefer_local): n1's callers take n1's share, then
    # n2's through n2; n2's callers then find both spent.
    before = mock.stats()["total"]
    served = {}
    for name, client in (("n1", c1), ("n2", c2)):
        with pytest.raises(E.LeaderUnavailable, match="leader_unavailable: fail"):
            client.complete("closed", HI, max_tokens=2, timeout_s=5)
        served[name] = []
        for _ in range(5):
            try:
                served[name].append(client.complete("shared", HI, max_tokens=2, timeout_s=5).attempt_log[-1].node)
            except E.BudgetExceeded:
                pass
    assert served == {"n1": ["n1", "n1", "n2", "n2"], "n2": []}, served
    assert mock.stats()["total"] - before == 4  # counted at the upstream: 2 per node, nothing refused was sent

    # The leader back on its port: both members rejoin by themselves, and say so.
    _, new_leader = gateway([shared, closed], name="n0", port=port, cluster=QUICK)
    wait_for(lambda: c1.status().in_cluster and c2.status().in_cluster, timeout_s=20, interval_s=0.2,
             message="the members to rejoin")
    wait_for(lambda: len(new_leader.cluster_status(members_only=True).members) == 3, timeout_s=10,
             message="3 members again")
    assert c1.status().membership == "member"
