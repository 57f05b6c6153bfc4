"""The registrar, the breaker actor and the client's correlator, in process (no sockets)."""

from __future__ import annotations

import time
from collections import deque

from actors.correlator import Correlator, key_of
from actors.core.membership import node_id
from actors.runtime.breaker import CircuitBreakerActor
from actors.runtime.cluster import ClusterRegistrar
from actors.runtime.protocol import (BreakerCheck, BreakerQuery, BreakerRefused, ClusterStatus, ClusterStatusRequest,
                                     Heartbeat, Introduce, MemberInfo, MemberRefused, Membership, NotReady,
                                     RegistrarConfig, Routes)
from actors.types import Completed, TokenChunk, Usage
from harness import Recorder


def _seen(asys, recorder):
    return asys.ask(recorder, "seen?", 2)


def _member(name, registry, incarnation, host="10.0.0.1", port=1900):
    return MemberInfo(name, registry, None, 0.0, incarnation, ["d1"], host=host,
                      node_id=node_id(name, host, port), admin_port=port)


def test_one_name_on_three_hosts_makes_three_members_and_a_second_claimant_of_a_live_id_is_refused(asys):
    registrar = asys.createActor(ClusterRegistrar)
    asys.tell(registrar, RegistrarConfig("demo", heartbeat_s=60, failure_timeout_s=120, hub=None))
    hosts = [asys.createActor(Recorder) for _ in range(3)]
    for i, registry in enumerate(hosts):
        asys.tell(registrar, Heartbeat(_member("demo", registry, f"inc{i}", host=f"10.0.0.{i + 1}")))
    memberships = [m for m in _seen(asys, hosts[0]) if isinstance(m, Membership)]
    assert [m.node_id for m in memberships[-1].members] == ["demo@10.0.0.1:1900", "demo@10.0.0.2:1900",
                                                            "demo@10.0.0.3:1900"]
    impostor = asys.createActor(Recorder)
    asys.tell(registrar, Heartbeat(_member("demo", impostor, "other", host="10.0.0.2")))   # held
    asys.tell(registrar, Heartbeat(_member("demo", hosts[1], "inc1", host="10.0.0.2")))    # the holder speaks
    asys.tell(registrar, Heartbeat(_member("demo", impostor, "other", host="10.0.0.2")))   # refused
    refused = [m for m in _seen(asys, impostor) if isinstance(m, MemberRefused)]
    assert refused and refused[0].node_id == "demo@10.0.0.2:1900"
    assert "already held by a live node" in refused[0].reason
    assert not any(isinstance(m, Membership) for m in _seen(asys, impostor))
    last = [m for m in _seen(asys, hosts[1]) if isinstance(m, Membership)][-1]
    assert [m.incarnation for m in last.members] == ["inc0", "inc1", "inc2"]


def test_the_registrar_never_drops_the_leaders_own_node_and_tells_a_member_it_took_back(asys):
    registrar = asys.createActor(ClusterRegistrar)
    leader, member = asys.createActor(Recorder), asys.createActor(Recorder)
    n0, m1 = _member("n0", leader, "inc0"), _member("m1", member, "inc1", host="10.0.0.2")
    asys.tell(registrar, RegistrarConfig("n0", heartbeat_s=0.05, failure_timeout_s=0.3, hub=None,
                                         leader_id=n0.node_id))
    asys.tell(registrar, Introduce(reply_to=leader))  # as the leader's locator does: the sweeps start
    asys.tell(registrar, Heartbeat(n0))
    asys.tell(registrar, Heartbeat(m1))

    def members():
        view = asys.ask(registrar, ClusterStatusRequest(members_only=True, token="m"), 2)
        assert isinstance(view, ClusterStatus)
        return [m.node for m in view.members]

    deadline = time.monotonic() + 10
    while members() != ["n0"]:  # both went quiet: the member is dropped, the leader's own node never
        assert time.monotonic() < deadline, "the silent member was never dropped"
        time.sleep(0.05)
    time.sleep(0.5)  # well past the failure timeout again: still there
    assert members() == ["n0"]
    asys.tell(registrar, Heartbeat(m1))  # alive after all: taken back at its first heartbeat
    assert members() == ["m1", "n0"]
    back = [m for m in _seen(asys, member) if isinstance(m, Membership)][-1]
    assert back.news[m1.node_id].startswith("back ") and "dropped for missed heartbeats" in back.news[m1.node_id]


def test_a_breaker_asked_before_its_init_answers_instead_of_failing(asys):
    breaker = asys.createActor(CircuitBreakerActor)
    refused = asys.ask(breaker, BreakerCheck("t1"), 2)
    assert isinstance(refused, BreakerRefused) and refused.token == "t1"
    assert "not been initialised" in refused.error.message
    assert isinstance(asys.ask(breaker, BreakerQuery(), 2), NotReady)


class FakeEndpoint:
    """An endpoint whose ask/listen hand over whatever arrives next, as Thespian's do."""

    def __init__(self, arriving):
        self.arriving = deque(arriving)
        self.sent = []

    def ask(self, target, message, timeout):
        self.sent.append((target, message))
        return self.listen(timeout)

    def listen(self, timeout):
        return self.arriving.popleft() if self.arriving else None


def test_the_correlator_files_every_message_under_its_own_request():
    stray = TokenChunk("abandoned", 7, "late")
    mine = [TokenChunk("r2", 0, "a"), TokenChunk("r2", 1, "b")]
    routes = Routes("d1", [], token="q1")
    done = Completed("r2", "ab", "stop", Usage(1, 2))
    endpoint = FakeEndpoint([stray, mine[0], routes, mine[1], done])
    correlator = Correlator(endpoint)
    correlator.open("r2")
    # A lookup is handed its own answer, though a stray and a chunk of r2 arrived first.
    assert correlator.request("registry", object(), "q1", 1) is routes
    assert [correlator.wait("r2", 1) for _ in range(3)] == [mine[0], mine[1], done]
    assert correlator.wait("r2", 0.01) is None
    assert correlator.dropped == 1 and "q1" not in correlator.boxes  # the stray, nobody waits for it
    assert key_of(routes) == "q1" and key_of(done) == "r2" and key_of("text") == ""
