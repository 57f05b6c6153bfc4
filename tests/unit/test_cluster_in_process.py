"""Two node registries and the leader's registrar in one in-process system (it has the leader
capability, so the leader locator lands here): joining, cluster status, a member that goes
silent, a registrar that dies. The multiprocTCPBase cluster is tests/cluster/."""

from __future__ import annotations

import time
from typing import Any

import pytest
from thespian.actors import ActorExitRequest, ActorSystem, ActorSystemConventionUpdate

from actors.runtime.cluster import LEADER_CAPABILITY, REGISTRAR_NAME, ClusterRegistrar
from actors.runtime.node import NodeRegistry
from actors.runtime.protocol import ClusterStatus, ClusterStatusRequest, Deploy, Deployed
from actors.settings.schema import ClusterConfig
from harness import ask, deployment


@pytest.fixture
def leader_system():
    system = ActorSystem("simpleSystemBase", {LEADER_CAPABILITY: True}, logDefs=False, transientUnique=True)
    yield system
    system.shutdown()


def until(asys, condition, timeout_s: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        asys.listen(0.02)
    raise AssertionError(f"no {what} within {timeout_s}s")


def members(asys, registry) -> list[str]:
    status = ask(asys, registry, ClusterStatusRequest(members_only=True, token="m"), ClusterStatus)
    return [m.node_id for m in status.members]


def two_nodes(asys, cluster: ClusterConfig) -> tuple[Any, Any]:
    leader, member = asys.createActor(NodeRegistry), asys.createActor(NodeRegistry)
    ask(asys, leader, Deploy("n0", [deployment(workers=1)], cluster=cluster, leader=True, admin_port=1900,
                             host="10.0.0.1"), Deployed, 15)
    ask(asys, member, Deploy("n1", [deployment(name="d2", model="d2", workers=1)], cluster=cluster, leader=False,
                             admin_port=1901, host="10.0.0.2"), Deployed, 15)
    # What Thespian tells a member's registry when the leader's admin joins the convention.
    asys.tell(member, ActorSystemConventionUpdate("leader-admin", {LEADER_CAPABILITY: True}, True))
    until(asys, lambda: len(members(asys, leader)) == 2, what="the member to join")
    return leader, member


def test_a_member_joins_and_either_node_answers_for_the_whole_cluster(leader_system):
    asys = leader_system
    leader, member = two_nodes(asys, ClusterConfig(heartbeat_s=0.1, failure_timeout_s=5))
    assert members(asys, member) == ["n0@10.0.0.1:1900", "n1@10.0.0.2:1901"]
    status = ask(asys, member, ClusterStatusRequest(token="full"), ClusterStatus, 10)
    assert status.leader == "n0" and status.token == "full" and status.unreachable == []
    assert [n.node for n in status.nodes] == ["n0", "n1"]
    assert {e.deployment for n in status.nodes for e in n.engines} == {"d1", "d2"}


def test_a_member_that_goes_silent_is_dropped_and_the_rest_serve_on(leader_system):
    asys = leader_system
    leader, member = two_nodes(asys, ClusterConfig(heartbeat_s=0.1, failure_timeout_s=1.0))
    asys.tell(member, ActorExitRequest())
    until(asys, lambda: members(asys, leader) == ["n0@10.0.0.1:1900"], timeout_s=10, what="the silent member dropped")
    status = ask(asys, leader, ClusterStatusRequest(token="after"), ClusterStatus, 10)
    assert [n.node for n in status.nodes] == ["n0"]


def test_members_find_a_new_registrar_when_the_old_one_dies(leader_system):
    asys = leader_system
    leader, member = two_nodes(asys, ClusterConfig(heartbeat_s=0.1, failure_timeout_s=1.0))
    old = asys.createActor(ClusterRegistrar, globalName=REGISTRAR_NAME)   # the running one, by its name
    asys.tell(old, ActorExitRequest())
    # Each registry notices the silence, keeps locating the leader, and joins the new registrar.
    until(asys, lambda: asys.createActor(ClusterRegistrar, globalName=REGISTRAR_NAME) != old,
          what="a new registrar")
    until(asys, lambda: len(members(asys, leader)) == 2 and len(members(asys, member)) == 2, timeout_s=10,
          what="both nodes in the new registrar's cluster")


def test_a_node_that_knows_no_registrar_answers_for_itself(leader_system):
    asys = leader_system
    lonely = asys.createActor(NodeRegistry)
    ask(asys, lonely, Deploy("n9", [deployment(workers=1)], cluster=ClusterConfig(heartbeat_s=60, failure_timeout_s=120), leader=False,
                             admin_port=1909, host="10.0.0.9"), Deployed, 15)
    status = ask(asys, lonely, ClusterStatusRequest(token="alone"), ClusterStatus, 10)
    assert status.leader == "" and [m.node for m in status.members] == ["n9"] and [n.node for n in status.nodes] == ["n9"]
    assert status.nodes[0].membership.startswith("not in cluster: joining") and not status.nodes[0].in_cluster
