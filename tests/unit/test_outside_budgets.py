"""Budgets of a node outside the cluster follow limits.leader_unavailable: never a fresh whole budget.

The registry tells each engine with a budget whether its node is in the cluster and in how
many shares a budget splits while it is not (StrictLeader: every node it knows of times its
own engines sharing the budget; 0 before it was ever in the cluster).
"""

from __future__ import annotations

import pytest

from actors import errors as E
from actors.core import engine_events as ev
from actors.core.budget import Budget
from actors.core.periods import parse_period
from actors.types import Completed, Usage
from harness import Rig, limits

NEVER_JOINED = ev.StrictLeader(False, 0, False)


def flood(rig: Rig, n: int, prefix: str = "x") -> list[str]:
    """Submit ``n`` requests, completing each one dispatched; the ids dispatched."""
    sent = []
    for i in range(n):
        rid = f"{prefix}{i}"
        rig.submit(rid)
        if rig.dispatches(rid):
            rig.report(rid)
            sent.append(rid)
    return sent


def window_requests(rig: Rig) -> int:
    return rig.core.limiter.usage().requests


@pytest.mark.parametrize("told", [NEVER_JOINED, None], ids=["never-joined", "not-told-yet"])
def test_a_member_never_in_the_cluster_waits_while_starting_then_refuses_without_sending(told):
    """An engine its node has not told about the cluster yet is outside it too: never a whole budget."""
    rig = Rig(told=told, limits=limits(rpm=10, window_s=60))
    rig.submit("r1")
    rig.advance(4.0)  # joining: the registry will say
    assert rig.terminals("r1") == [] and rig.dispatches() == []
    rig.advance(1.1)  # past the failure timeout since the engine started
    error = rig.terminal("r1").error
    assert isinstance(error, E.LeaderUnavailable) and error.retryable and error.retry_after_s == 5.0
    assert "has not been in the cluster since it started" in error.message
    assert rig.dispatches() == [] and window_requests(rig) == 0


def test_a_member_joining_while_a_request_waits_serves_it_against_the_cluster_budget():
    rig = Rig(told=NEVER_JOINED, limits=limits(rpm=10, window_s=60))
    rig.submit("r1")
    rig.advance(1.0)
    rig.feed(ev.StrictLeader(True, 3, True))
    rig.advance(0.1)
    assert rig.dispatches("r1")
    rig.report("r1")
    assert isinstance(rig.terminal("r1"), Completed)
    assert len(flood(rig, 12)) == 9  # in the cluster: the whole budget, as the merged view allows


def test_after_losing_the_leader_an_approximate_budget_takes_this_nodes_share_by_default():
    rig = Rig(limits=limits(rpm=12, window_s=60))
    assert rig.dep.limits.leader_unavailable == "local_share"  # approximate's default
    rig.feed(ev.StrictLeader(True, 3, True))
    assert len(flood(rig, 2, "before")) == 2
    rig.feed(ev.StrictLeader(False, 3, False))  # three nodes known, one engine each: a share is 12 / 3
    assert len(flood(rig, 6)) == 4
    assert rig.terminals("x4") == rig.terminals("x5") == []  # held until the share has room, or their deadline
    assert window_requests(rig) == 6  # counted in the replica too: the cluster sees them once back
    rig.feed(ev.StrictLeader(True, 3, True))  # back: the merged view again
    rig.advance(0.1)
    assert rig.dispatches("x4") and rig.dispatches("x5") and window_requests(rig) == 8


def test_the_share_divides_by_this_nodes_engines_sharing_the_budget_too():
    rig = Rig(limits=limits(rpm=12, window_s=60))
    rig.feed(ev.StrictLeader(True, 6, True))
    rig.feed(ev.StrictLeader(False, 6, False))  # e.g. two nodes known, three replicas here
    assert len(flood(rig, 5)) == 2


def test_leader_unavailable_fail_refuses_an_approximate_budget_outside_the_cluster():
    rig = Rig(limits=limits(rpm=12, window_s=60, leader_unavailable="fail"))
    rig.feed(ev.StrictLeader(True, 2, True))
    rig.feed(ev.StrictLeader(False, 2, False))
    rig.submit("r1")
    error = rig.terminal("r1").error
    assert isinstance(error, E.LeaderUnavailable) and "limits.leader_unavailable: fail" in error.message
    assert rig.dispatches() == []


def test_the_leaders_own_node_is_always_in_the_cluster_whatever_its_registrar_does():
    rig = Rig(limits=limits(rpm=3, window_s=60))
    rig.feed(ev.StrictLeader(False, 0, True))  # strict limiter not known yet: no matter for approximate
    assert len(flood(rig, 4)) == 3


def test_strict_local_share_of_a_member_never_in_the_cluster_is_no_budget_at_all():
    rig = Rig(told=NEVER_JOINED, limits=limits(rpm=10, window_s=60, mode="strict", leader_unavailable="local_share"))
    rig.submit("r1")
    rig.advance(5.1)
    error = rig.terminal("r1").error
    assert isinstance(error, E.LeaderUnavailable) and "does not know its share" in error.message
    assert rig.dispatches() == []


@pytest.mark.parametrize("joined", [False, True])
def test_an_approximate_spend_budget_of_a_member_never_in_the_cluster_refuses(joined):
    rig = Rig(up=False)
    rig.start(told=NEVER_JOINED, node="n1", budgets=[Budget("key", "k1", 1.0, parse_period("30d"))],
              budget_slot="n1@h:1/d1/0")
    if joined:  # joined, then lost: the replica holds the cluster's spend for the period
        rig.feed(ev.StrictLeader(True, 2, True))
        rig.feed(ev.StrictLeader(False, 2, False))
    rig.submit("r1", metadata={"http_key": "k1"})
    rig.advance(5.1)
    if joined:
        rig.report("r1", usage=Usage(10, 10))
        assert isinstance(rig.terminal("r1"), Completed)
    else:
        assert isinstance(rig.terminal("r1").error, E.LeaderUnavailable) and rig.dispatches() == []
    rig.submit("anon")  # no budget applies to it: served either way
    rig.advance(0.1)
    assert rig.dispatches("anon")
