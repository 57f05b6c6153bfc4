"""Strict rate limits on leases, with real nodes: unequal demand, and the leader SIGKILLed mid-flood.

What reaches the provider is counted where it arrives (the mock's arrival record): each request's
message names its node, and its deadline, from which its send time follows.
"""

from __future__ import annotations

import threading
import time

from actors import errors as E
from actors.core.leases import LEASE_TTL_S
from actors.testing.load import open_loop
from actors.types import Completed, Failed

from conftest import deployment, fresh_window_s, wait_for
from test_cluster import HI, WindowMonitor, _leader_hub, cluster  # noqa: F401  (the fixture)

DEADLINE_S = 2.0


def tagged(node: str):
    """A request's message: its node and its deadline (its send time is the deadline less DEADLINE_S)."""
    return lambda deadline: f"{node} {deadline:.3f}"


def flood(nodes, model, rates, seconds, stop=None):
    """Each node offered its own rate, open loop, at once; each node's terminals."""
    results: list[list] = [[] for _ in nodes]
    threads = [threading.Thread(target=open_loop, args=(client, model, rate, seconds, results[i], DEADLINE_S),
                                kwargs={"prompt": tagged(f"n{i}"), "stop": stop})
               for i, ((_, client), rate) in enumerate(zip(nodes, rates))]
    for t in threads:
        t.start()
    return threads, results


def upstream(mock, window_s):
    """What reached the provider during the flood: (arrival, node, send time), and arrivals per window."""
    arrived = [(t, *prompt.split()) for t, prompt in mock.arrivals() if prompt[:1] == "n"]
    calls = [(t, node, float(deadline) - DEADLINE_S) for t, node, deadline in arrived]
    per_window: dict[int, int] = {}
    for t, _ in mock.arrivals():
        per_window[int(t // window_s)] = per_window.get(int(t // window_s), 0) + 1
    return calls, per_window


def test_strict_shares_follow_unequal_demand_and_never_exceed_the_cap(cluster, mock):
    cap, window_s = 60, fresh_window_s()
    dep = deployment(mock.url, "d1", workers=2, queue_capacity=1024,
                     limits={"rpm": cap, "window_s": window_s, "mode": "strict"})
    nodes = cluster([dep])
    for _, client in nodes:   # every engine a lease client (a new leader first learns for SETTLE_S)
        assert client.complete("d1", HI, max_tokens=1, timeout_s=60).text
    demand = [3, 1, 6]        # the leader's node in the middle
    rates = [1.5 * d for d in demand]   # 2x the cap over the flood: it binds half way
    with WindowMonitor(nodes[0][1], _leader_hub(nodes[0][1]), "d1") as monitor:
        threads, results = flood(nodes, "d1", rates, 8.0)
        for t in threads:
            t.join(60)
        wait_for(monitor.settled, timeout_s=10, message="the counters to settle")
    calls, per_window = upstream(mock, window_s)
    admitted = [sum(isinstance(r, Completed) for r in node) for node in results]
    cut_short = sum(isinstance(r, Failed) and isinstance(r.error, E.DeadlineExceeded) and r.attempts > 0
                    for node in results for r in node)   # sent, or not: the stop may have come while it was written
    # Never over the cap, at the provider and at the counters (every window of the run).
    assert all(n <= cap for n in per_window.values()) and all(n <= cap for n in monitor.counts.values()), \
        (per_window, monitor.counts)
    # Exactly what the counters admitted reached the provider (less attempts cut short by their deadline).
    total = mock.stats()["total"]
    assert len(nodes) + sum(admitted) <= total <= sum(monitor.counts.values()) <= total + cut_short
    # The cap bound: refused as spent across the cluster (or waiting for a share until its deadline), nothing else.
    refused = [r.error for node in results for r in node if isinstance(r, Failed)]
    assert any(isinstance(e, E.BudgetExceeded) for e in refused), refused[:3]
    assert {type(e) for e in refused} <= {E.BudgetExceeded, E.DeadlineExceeded}, refused[:3]
    # Each node's admitted share is ordered like its demand, at the provider as at the callers.
    by_demand = sorted(range(len(nodes)), key=lambda i: demand[i])
    assert [admitted[i] for i in by_demand] == sorted(admitted) and len(set(admitted)) == len(admitted), admitted
    sent = [sum(node == f"n{i}" for _, node, _ in calls) for i in range(len(nodes))]
    assert [sent[i] for i in by_demand] == sorted(sent) and len(set(sent)) == len(sent), sent


def test_leader_loss_mid_flood_spends_the_leases_then_fails_closed(cluster, mock):
    cap, window_s = 400, fresh_window_s()
    dep = deployment(mock.url, "d1", workers=2, queue_capacity=1024,
                     limits={"rpm": cap, "window_s": window_s, "mode": "strict"})
    nodes = cluster([dep])
    for _, client in nodes:
        assert client.complete("d1", HI, max_tokens=1, timeout_s=60).text   # the leader learns first (SETTLE_S)
    members = nodes[1:]
    threads, results = flood(members, "d1", [6.0, 6.0], 12.0)
    # Leases are being spent: both members served under the flood before the leader goes.
    wait_for(lambda: all(sum(isinstance(r, Completed) for r in node) >= 3 for node in results), timeout_s=20,
             message="both members to serve under their leases")
    killed_at = time.time()
    nodes[0][0].kill()   # SIGKILL to every process of the leader's node, mid-flood
    for t in threads:
        t.join(60)
    calls, per_window = upstream(mock, window_s)
    assert all(n <= cap for n in per_window.values()), per_window
    completed = sum(isinstance(r, Completed) for node in results for r in node)
    cut_short = sum(isinstance(r, Failed) and isinstance(r.error, E.DeadlineExceeded) and r.attempts > 0
                    for node in results for r in node)
    assert len(nodes) + completed <= mock.stats()["total"] <= len(nodes) + completed + cut_short
    # Members go on serving what their leases still hold: requests sent after the kill reach the provider...
    after_kill = [(node, sent) for _, node, sent in calls if sent > killed_at]
    assert after_kill, "no member served anything under its lease once the leader was gone"
    # ...but none sent once every lease has expired (a grant lasts LEASE_TTL_S from its ask, sent before the kill).
    assert all(sent <= killed_at + LEASE_TTL_S for _, sent in after_kill), \
        sorted(sent - killed_at for _, sent in after_kill)[-3:]
    # Then they fail closed with the documented typed error; nothing after the kill fails any other way.
    late = [r for node in results for r in node if isinstance(r, Failed)]
    assert any(isinstance(r.error, E.LeaderUnavailable) for r in late)
    assert {type(r.error) for r in late} <= {E.LeaderUnavailable, E.DeadlineExceeded}, [r.error for r in late][:3]
    for node in results:
        assert any(isinstance(r, Failed) and isinstance(r.error, E.LeaderUnavailable) for r in node)
        unavailable = [r for r in node if isinstance(r, Failed) and isinstance(r.error, E.LeaderUnavailable)]
        assert all(not any(a.sent for a in r.attempt_log) for r in unavailable)   # refused: nothing went upstream
