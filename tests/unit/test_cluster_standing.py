"""A member's standing and its cluster status while the leader is away, on simpleSystemBase.

Two real NodeRegistry actors stand for two members; a silent actor stands for the leader
(it never answers): what a member learned of the cluster is what it can still show.
"""

from __future__ import annotations

import time

from thespian.actors import Actor

from actors.runtime.node import NodeRegistry
from actors.runtime.protocol import (ClusterStatus, ClusterStatusRequest, Deploy, Deployed, MemberInfo, Membership,
                                     NodeStatus, StatusRequest)
from actors.settings.schema import ClusterConfig
from harness import ask

CLUSTER = ClusterConfig(heartbeat_s=0.2, failure_timeout_s=1.0, reregistration_s=1)


class Silent(Actor):
    """A leader that has gone away: it never answers."""

    def receiveMessage(self, message, sender):
        pass


def member(asys, name: str, port: int) -> tuple[object, MemberInfo]:
    registry = asys.createActor(NodeRegistry)
    ask(asys, registry, Deploy(name, [], CLUSTER, leader=False, admin_port=port, host="10.0.0.7"), Deployed)
    (me,) = ask(asys, registry, ClusterStatusRequest(members_only=True, token="me"), ClusterStatus).members
    return registry, me


def test_a_member_says_it_is_not_in_the_cluster_until_a_membership_counts_it(asys):
    registry, me = member(asys, "m1", 1901)
    status = ask(asys, registry, StatusRequest(token="s"), NodeStatus)
    assert not status.in_cluster and status.membership.startswith("not in cluster: joining")
    stranger = MemberInfo("m9", registry, None, 0.0, "other-incarnation", node_id=me.node_id)
    asys.tell(registry, Membership("n0", "inc", [stranger], None))  # not this start of the node
    assert not ask(asys, registry, StatusRequest(token="s"), NodeStatus).in_cluster
    asys.tell(registry, Membership("n0", "inc", [me], None))
    status = ask(asys, registry, StatusRequest(token="s"), NodeStatus)
    assert status.in_cluster and status.membership == "member"


def test_status_during_a_leader_outage_lists_every_node_learned_and_names_the_silent_ones(asys, monkeypatch):
    from actors.runtime import cluster

    monkeypatch.setattr(cluster, "STATUS_TIMEOUT_S", 0.5)   # how long a gathering waits for the silent leader
    m1, info1 = member(asys, "m1", 1901)
    m2, info2 = member(asys, "m2", 1902)
    leader = MemberInfo("n0", asys.createActor(Silent), None, 0.0, "inc-n0", node_id="n0@10.0.0.1:1900",
                        host="10.0.0.1", admin_port=1900, last_seen_s=0.2)
    asys.tell(m1, Membership("n0", "inc", [leader, info1, info2], None))
    asys.tell(m2, Membership("n0", "inc", [leader, info1, info2], None))
    assert ask(asys, m1, StatusRequest(token="s"), NodeStatus).in_cluster
    # No membership comes any more: after the failure timeout m1 knows the leader is gone.
    end = time.monotonic() + 5
    while (status := ask(asys, m1, StatusRequest(token="s"), NodeStatus)).in_cluster:
        assert time.monotonic() < end, "the member never noticed the leader was gone"
        time.sleep(0.05)
    assert status.membership.startswith("not in cluster: leader n0 unreachable")
    cluster = ask(asys, m1, ClusterStatusRequest(token="c"), ClusterStatus, timeout_s=10)
    assert cluster.token == "c" and cluster.leader == ""  # nobody leads that m1 can reach
    assert [m.node for m in cluster.members] == ["m1", "m2", "n0"]
    assert [n.node for n in cluster.nodes] == ["m1", "m2"] and cluster.unreachable == ["n0"]
    by_node = {n.node: n for n in cluster.nodes}
    assert not by_node["m1"].in_cluster and by_node["m2"].node_id == info2.node_id
    stale = {m.node: m.last_seen_s for m in cluster.members}
    assert stale["n0"] > 1.0 and stale["m1"] == 0.0  # as last heard, aged by the time since
    members = ask(asys, m1, ClusterStatusRequest(members_only=True, token="m"), ClusterStatus)
    assert [m.node for m in members.members] == ["m1", "m2", "n0"] and members.leader == ""
