"""The node registry on simpleSystemBase: supervision of its engines, routes, liveness answers, status."""

from __future__ import annotations

import time

from thespian.actors import ActorExitRequest

from actors.runtime.protocol import (Deploy, Deployed, EngineCheck, EngineLiveness, NodeStatus, Route, Routes,
                                     StatusRequest)
from harness import ask, deployment




def routes(asys, registry, token):
    return ask(asys, registry, Route("d1", token=token), Routes)


def test_a_message_before_the_deploy_gets_a_plain_answer(node):
    asys, registry = node
    assert routes(asys, registry, "t0").entries == []
    liveness = ask(asys, registry, EngineCheck("nowhere", token="t1"), EngineLiveness)
    assert (liveness.token, liveness.alive, liveness.reason) == ("t1", False, "not an engine of this node")
    assert ask(asys, registry, StatusRequest(token="t2"), NodeStatus).token == "t2"


def test_an_engine_that_exits_is_restarted_and_its_old_address_is_reported_dead(node):
    asys, registry = node
    ask(asys, registry, Deploy("n1", [deployment(workers=1)], admin_port=1900, host="10.0.0.7"), Deployed, 15)
    first = routes(asys, registry, "a")
    assert first.token == "a" and len(first.entries) == 1
    old = first.entries[0].engine
    assert ask(asys, registry, EngineCheck(old, token="b"), EngineLiveness).alive
    asys.tell(old, ActorExitRequest())  # the engine goes; its parent hears ChildActorExited

    def moved():
        entries = routes(asys, registry, "c").entries
        return entries and entries[0].engine != old and entries[0].engine
    end = time.monotonic() + 10
    while not (new := moved()):
        assert time.monotonic() < end, "the engine was not restarted"
    gone = ask(asys, registry, EngineCheck(old, token="d"), EngineLiveness)
    assert not gone.alive and "died; restarting" in gone.reason
    assert ask(asys, registry, EngineCheck(new, token="e"), EngineLiveness).alive
    status = ask(asys, registry, StatusRequest(token="f"), NodeStatus)
    assert status.node_id == "n1@10.0.0.7:1900" and status.address == "10.0.0.7:1900"
    assert [(s["deployment"], s["restarts"], s["state"]) for s in status.supervision] == [("d1", 1, "running")]
    assert [e.deployment for e in status.engines] == ["d1"]
