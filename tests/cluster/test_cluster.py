"""Several nodes in one Thespian convention on 127.0.0.1: membership, shared budgets, failures."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from actors import errors as E
from actors.testing.load import open_loop
from actors.types import Completed, Failed
from actors.runtime.protocol import LimiterDelta, LimiterStateRequest

from conftest import deployment, free_port, fresh_window_s, wait_for

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]
FAST_CLUSTER = {"heartbeat_s": 0.5, "failure_timeout_s": 3.0, "reregistration_s": 2}


@pytest.fixture
def cluster(gateway, mock):
    """Factory: three nodes (a leader and two members) serving the same deployments."""

    def make(deployments, n=3, cluster_cfg=None):
        nodes = []
        leader_port = free_port()
        for i in range(n):
            node, client = gateway(deployments, name=f"n{i}", port=leader_port if i == 0 else None,
                                   cluster=cluster_cfg or FAST_CLUSTER,
                                   leader=None if i == 0 else f"127.0.0.1:{leader_port}")
            nodes.append((node, client))
        wait_for(lambda: len(nodes[0][1].cluster_status(members_only=True).members) == n, timeout_s=20,
                 message=f"{n} members")
        return nodes

    return make


def test_nodes_join_and_status_shows_the_whole_cluster(cluster, mock):
    nodes = cluster([deployment(mock.url, "d1", workers=1, limits={"rpm": 1000, "window_s": fresh_window_s()})])
    for node, client in nodes:
        assert client.complete("d1", HI, max_tokens=2).text
    status = nodes[2][1].cluster_status()  # asked of a member, answered by the leader's registrar
    assert status.leader == "n0" and [m.node for m in status.members] == ["n0", "n1", "n2"]
    assert [n.node for n in status.nodes] == ["n0", "n1", "n2"] and status.unreachable == []
    assert all(n.engines[0].completed == 1 for n in status.nodes)
    # every hub converges on the cluster-wide count for the shared budget
    wait_for(lambda: {n.limits[0]["requests"] for n in nodes[1][1].cluster_status().nodes} == {3},
             message="the budget view to converge")
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "status", "--leader",
                           f"127.0.0.1:{nodes[0][0].admin_port}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "cluster led by n0: 3 node(s)" in proc.stdout
    assert "- n1" in proc.stdout and "- n2" in proc.stdout
    assert "budget d1 (approximate), cluster-wide this window: requests 3/1000" in proc.stdout


class WindowMonitor:
    """Samples the merged GCounters of one budget on a hub: admitted requests per window.

    A hub keeps only the current and the previous window, so the monitor records each
    window's count while it is still there; a window's count is final one sync after it ends.
    """

    def __init__(self, client, hub, key):
        self.client, self.hub, self.key = client, hub, key
        self.counts: dict[int, int] = {}
        self.changed = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        endpoint = self.client._endpoint()
        while not self.stop.wait(0.1):
            reply = endpoint.ask(self.hub, LimiterStateRequest(self.key), 5)
            if not isinstance(reply, LimiterDelta):
                continue
            for window, named in reply.delta.items():
                admitted = sum(named.get("requests", {}).values()) - sum(named.get("requests_refunded", {}).values())
                if admitted != self.counts.get(int(window)):
                    self.counts[int(window)] = admitted
                    self.changed = time.monotonic()

    def settled(self, quiet_s: float = 0.5) -> bool:
        return time.monotonic() - self.changed > quiet_s

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def _leader_hub(client):
    status = client.cluster_status()
    return next(m.limiter for m in status.members if m.node == status.leader)


def _flood_cluster(nodes, model, budget, window_s, windows=3):
    """10x the budget, open loop, spread over the nodes, from a window boundary; per-window counts."""
    wait_for(lambda: (time.time() % window_s) < 0.05, timeout_s=window_s + 1, interval_s=0.005,
             message="a window boundary")
    first = math.floor(time.time() / window_s)
    results: list = []
    rate = 10 * budget / window_s / len(nodes)
    with WindowMonitor(nodes[0][1], _leader_hub(nodes[0][1]), model) as monitor:
        threads = [threading.Thread(target=open_loop, args=(client, model, rate, windows * window_s, results))
                   for _, client in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Calls that waited into the next window are admitted as the flood ends: their counts reach
        # the leader's hub a sync or two later. Quiet is counted from the end of the flood.
        monitor.changed = time.monotonic()
        wait_for(monitor.settled, timeout_s=5, message="the counters to settle")
    return results, [monitor.counts.get(w, 0) for w in range(first, first + windows)], monitor.counts


def test_approximate_limiter_stays_within_5_percent_at_10x_oversubscription(cluster, mock):
    budget, window_s = 40, 4.0
    dep = deployment(mock.url, "d1", workers=2, queue_capacity=1024, limits={"rpm": budget, "window_s": window_s})
    nodes = cluster([dep])
    results, measured, all_counts = _flood_cluster(nodes, "d1", budget, window_s)
    admitted = [r for r in results if isinstance(r, Completed)]
    refused = [r for r in results if isinstance(r, Failed)]
    assert refused and {type(r.error) for r in refused} <= {E.BudgetExceeded, E.DeadlineExceeded}, \
        {type(r.error).__name__ for r in refused}
    # What reached the provider is what the counters admitted (less a few admitted calls that
    # hit their own 0.5 s deadline on the way): nothing refused was sent.
    cut_short = sum(isinstance(r.error, E.DeadlineExceeded) for r in refused)
    assert len(admitted) <= mock.stats()["total"] <= sum(all_counts.values()) <= mock.stats()["total"] + cut_short
    # The share rule holds the cluster within the budget (and a request per other slot) while deltas
    # arrive within the staleness the replicas measured. A stall longer than the last 5 s showed
    # breaks that premise; the engines count every such late delta, and then only the plain
    # GCounter bound applies: what the nodes were offered while a view was that late.
    late, worst_late_s = _late_deltas(nodes, "d1")
    bound = budget * 1.05 if not late else budget * 1.05 + 10 * budget / window_s * worst_late_s
    assert all(c <= bound for c in measured), (measured, f"{late} late deltas, the worst {worst_late_s:.3f} s late")
    # The budget was in use; how much of it a loaded machine fills is not this test's to say.
    assert admitted and sum(measured) > 0, measured


def _late_deltas(nodes, deployment: str) -> tuple[int, float]:
    """Deltas the deployment's engines saw arrive later than the staleness they assumed, and the worst lateness."""
    views = [e.budget_view for _, client in nodes for e in client.status().engines
             if e.deployment == deployment and e.budget_view]
    assert views, "every engine of a rate-limited deployment reports its replica's health"
    return sum(int(v["late_deltas"]) for v in views), max(v["worst_late_s"] for v in views)


def test_strict_limiter_is_never_over_budget(cluster, mock):
    budget, window_s = 30, 3.0
    dep = deployment(mock.url, "d1", workers=2, queue_capacity=1024,
                     limits={"rpm": budget, "window_s": window_s, "mode": "strict"})
    nodes = cluster([dep])
    # A new strict limiter first waits (SETTLE_S) to seed itself from the cluster's counters.
    assert nodes[1][1].complete("d1", HI, max_tokens=1, timeout_s=20).text
    results, measured, all_counts = _flood_cluster(nodes, "d1", budget, window_s)
    admitted = [r for r in results if isinstance(r, Completed)]
    cut_short = sum(isinstance(r, Failed) and isinstance(r.error, E.DeadlineExceeded) for r in results)
    assert len(admitted) <= mock.stats()["total"] <= sum(all_counts.values()) <= mock.stats()["total"] + cut_short
    # Safety whatever the machine's load: no window over its budget, ever. (No floor: at load
    # 7-16 on two cores the flood itself cannot offer enough to fill every window.)
    assert all(c <= budget for c in measured), measured
    assert admitted and sum(measured) > 0, measured
    refused = [r for r in results if isinstance(r, Failed)]
    assert {type(r.error) for r in refused} <= {E.BudgetExceeded, E.DeadlineExceeded}, refused[:3]


def test_a_killed_member_is_noticed_and_dropped_within_seconds(cluster, mock):
    nodes = cluster([deployment(mock.url, "d1", workers=1)])
    leader_client = nodes[0][1]
    victim = nodes[2][0]
    victim.kill()  # SIGKILL to every process of that node: no goodbye
    killed_at = time.monotonic()
    wait_for(lambda: [m.node for m in leader_client.cluster_status(members_only=True).members] == ["n0", "n1"],
             timeout_s=15, interval_s=0.05, message="n2 to be dropped")
    detected = time.monotonic() - killed_at
    # heartbeat 0.5 s, failure timeout 3 s: noticed within about 3.5 s (+ a sweep)
    assert detected < FAST_CLUSTER["failure_timeout_s"] + 2 * FAST_CLUSTER["heartbeat_s"] + 1
    status = leader_client.cluster_status()
    assert [n.node for n in status.nodes] == ["n0", "n1"]
    assert nodes[1][1].complete("d1", HI, max_tokens=2).text  # the rest keeps serving


def test_leader_loss_fails_strict_admission_closed_and_a_restarted_leader_is_rejoined(cluster, gateway, mock):
    strict = deployment(mock.url, "s1", workers=1, limits={"rpm": 1000, "mode": "strict", "window_s": fresh_window_s()})
    nodes = cluster([strict], n=2)
    member_client = nodes[1][1]
    assert member_client.complete("s1", HI, max_tokens=2).text  # strict admission via the leader
    leader, _ = nodes[0]
    port = leader.admin_port
    leader.kill()
    killed_at = time.monotonic()
    # The member notices: strict admission fails closed with a typed error, fast.
    def refused():
        try:
            member_client.complete("s1", HI, max_tokens=2, timeout_s=5)
        except E.LeaderUnavailable:
            return True
        return False
    wait_for(refused, timeout_s=20, interval_s=0.2, message="strict admission to fail closed")
    detected = time.monotonic() - killed_at
    assert detected < FAST_CLUSTER["failure_timeout_s"] + 5
    assert member_client.cluster_status(members_only=True).leader == ""  # answered by the member alone
    # A new leader on the same port: the member rejoins by itself.
    restarted_at = time.monotonic()
    _, new_leader_client = gateway([strict], name="n0", port=port, cluster=FAST_CLUSTER)
    wait_for(lambda: [m.node for m in new_leader_client.cluster_status(members_only=True).members] == ["n0", "n1"],
             timeout_s=20, interval_s=0.05, message="the member to rejoin")
    rejoined = time.monotonic() - restarted_at
    assert rejoined < 10
    def admitted():
        try:
            return member_client.complete("s1", HI, max_tokens=2, timeout_s=5).text
        except E.LeaderUnavailable:
            return False
    wait_for(admitted, timeout_s=15, interval_s=0.2, message="strict admission to work again")


def test_one_config_with_one_name_on_three_nodes_makes_three_members_sharing_the_budget(gateway, mock):
    dep = deployment(mock.url, "d1", workers=1, limits={"rpm": 1000, "window_s": fresh_window_s()})
    leader_port = free_port()
    nodes = [gateway([dep], name="demo", port=leader_port if i == 0 else None, cluster=FAST_CLUSTER,
                     leader=None if i == 0 else f"127.0.0.1:{leader_port}") for i in range(3)]
    leader_client = nodes[0][1]
    wait_for(lambda: len(leader_client.cluster_status(members_only=True).members) == 3, timeout_s=20,
             message="three members of one name")
    status = leader_client.cluster_status()
    ports = sorted(node.admin_port for node, _ in nodes)
    assert sorted(m.admin_port for m in status.members) == ports
    assert sorted(n.address for n in status.nodes) == sorted(f"127.0.0.1:{p}" for p in ports)
    assert len({n.node_id for n in status.nodes}) == 3 and {n.node for n in status.nodes} == {"demo"}
    for _, client in nodes:
        assert client.complete("d1", HI, max_tokens=2).text
    # Every hub sees every node's calls: the budget is the cluster's, not each node's.
    wait_for(lambda: [n.limits[0]["requests"] for n in leader_client.cluster_status().nodes] == [3, 3, 3],
             message="the shared budget view to converge")
    nodes[2][0].kill()
    wait_for(lambda: sorted(m.admin_port for m in leader_client.cluster_status(members_only=True).members)
             == sorted(node.admin_port for node, _ in nodes[:2]), timeout_s=15, message="the killed one to be dropped")
