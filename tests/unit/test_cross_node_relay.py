"""Cross-node routing, the actors on simpleSystemBase: a registry pushes its routes to the other
members and lists theirs (through its relay); the relay forwards a call to another node's engine
and passes its answers back (docs/routing.md, "Across a cluster")."""

from __future__ import annotations

import time

from harness import Recorder, SendAs, actor_instance, ask, deployment

from actors.errors import NotFound
from actors.runtime.protocol import (
    Deploy,
    Deployed,
    EngineCheck,
    EngineLiveness,
    MemberInfo,
    Membership,
    PeerRoutes,
    Route,
    RouteEntry,
    Routes,
)
from actors.settings.schema import ClusterConfig
from actors.types import Cancel, Completed, Failed, InferenceRequest, TokenChunk, Usage

PEER_ID = "n2@10.0.0.2:1901"


def seen(asys, recorder, kind, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        answer = asys.ask(recorder, "seen?", 1)
        assert answer is None or isinstance(answer, list), answer
        got = [m for m in answer or [] if isinstance(m, kind)]
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"no {kind.__name__} within {timeout_s}s")


def joined(asys, registry, peer_registry):
    """The registry deployed as n1 in a membership with n2, whose registry is ``peer_registry``."""
    ask(asys, registry, Deploy("n1", [deployment(name="d1", model="m1", workers=1)], admin_port=1900,
                               host="10.0.0.1", leader=False, cluster=ClusterConfig(heartbeat_s=0.1)), Deployed, 15)
    me = actor_instance(asys, registry)
    members = [MemberInfo("n1", registry, None, 0.0, me.incarnation, ["d1"], node_id=me.node_id),
               MemberInfo("n2", peer_registry, None, 0.0, "i2", ["d9"], node_id=PEER_ID)]
    asys.tell(registry, Membership("n1", "i1", members, None))


def test_a_registry_pushes_its_engines_to_the_other_members_and_lists_theirs_through_its_relay(node):
    asys, registry = node
    peer, engine_b = asys.createActor(Recorder), asys.createActor(Recorder)
    joined(asys, registry, peer)
    (pushed, *_) = seen(asys, peer, PeerRoutes)        # at the next heartbeat
    assert pushed.node_id == "n1@10.0.0.1:1900" and [e.deployment for e in pushed.entries] == ["d1"]
    assert pushed.entries[0].via is None and pushed.entries[0].load_age_s is not None

    remote = RouteEntry("d9", "m9", engine_b, "n2", load_age_s=0.1)
    asys.tell(registry, PeerRoutes(PEER_ID, [RouteEntry("forged", "m9", engine_b, "n2")]))   # not n2's registry
    asys.tell(peer, SendAs(registry, PeerRoutes(PEER_ID, [remote])))
    end = time.monotonic() + 5
    while not (entries := ask(asys, registry, Route("m9", token="a"), Routes).entries) and time.monotonic() < end:
        time.sleep(0.05)
    (entry,) = entries
    assert (entry.deployment, entry.node, entry.engine) == ("d9", "n2", engine_b)
    assert entry.via is not None and entry.load_age_s >= 0.1      # its relay; the push's age added
    assert [e.via for e in ask(asys, registry, Route("m1", token="b"), Routes).entries] == [None]   # its own
    # Liveness of another node's engine: from the pushes, through this relay only.
    assert ask(asys, registry, EngineCheck(engine_b, token="c", via=entry.via), EngineLiveness).alive
    stale = ask(asys, registry, EngineCheck(engine_b, token="d", via=peer), EngineLiveness)
    assert not stale.alive and "relay" in stale.reason


def test_the_relay_forwards_a_call_to_a_listed_engine_only_and_passes_its_answers_back_once(node):
    asys, registry = node
    peer, engine_b = asys.createActor(Recorder), asys.createActor(Recorder)
    joined(asys, registry, peer)
    asys.tell(peer, SendAs(registry, PeerRoutes(PEER_ID, [RouteEntry("d9", "m9", engine_b, "n2")])))
    end = time.monotonic() + 5
    while not (entries := ask(asys, registry, Route("m9", token="a"), Routes).entries) and time.monotonic() < end:
        time.sleep(0.05)
    relay = entries[0].via

    # Not a listed engine: refused, nothing forwarded.
    refused = ask(asys, relay, InferenceRequest("m9", [], request_id="r0", relay_to=peer), Failed)
    assert refused.request_id == "r0" and isinstance(refused.error, NotFound)
    call = InferenceRequest("m9", [{"role": "user", "content": "hi"}], request_id="r1", relay_to=engine_b,
                            channel={"port": 1, "token": "this host's channel"}, deadline_unix=time.time() + 30)
    asys.tell(relay, call)
    (forwarded,) = seen(asys, engine_b, InferenceRequest)
    assert forwarded.request_id == "r1" and forwarded.relay_to is None and forwarded.channel is None
    asys.tell(relay, Cancel("r1"))
    assert [c.request_id for c in seen(asys, engine_b, Cancel)] == ["r1"]

    # The engine's answers, as another node would send them: to the caller, each once.
    done = Completed("r1", "hi there", "stop", Usage(1, 2), chunks=2)
    for message in (TokenChunk("r1", 0, "hi"), done, TokenChunk("r1", 1, " there"), done):
        asys.tell(engine_b, SendAs(relay, message))
    got, end = [], time.monotonic() + 5
    while time.monotonic() < end and len(got) < 3:
        reply = asys.listen(0.1)
        if isinstance(reply, (TokenChunk, Completed)):
            got.append(reply)
    assert [(type(m).__name__, getattr(m, "seq", None)) for m in got] == \
        [("TokenChunk", 0), ("Completed", None), ("TokenChunk", 1)]   # a straggler passes; a second terminal never
    assert not isinstance(asys.listen(0.3), Completed)


def test_another_nodes_engine_is_handed_out_only_once_the_relay_said_it_forwards_to_it(node):
    """A caller's request and the registry's RelayTargets reach the relay from two senders, in either
    order: the registry lists an engine only after the relay confirmed the list naming it."""
    from actors.runtime.protocol import RelayTargets, RelayTargetsTaken

    asys, registry = node
    peer, engine_b, relay = (asys.createActor(Recorder) for _ in range(3))
    joined(asys, registry, peer)
    me = actor_instance(asys, registry)
    me.relay, me.relay_told = relay, None      # a relay that has not answered yet (a recorder)
    asys.tell(peer, SendAs(registry, PeerRoutes(PEER_ID, [RouteEntry("d9", "m9", engine_b, "n2")])))
    (told,) = seen(asys, relay, RelayTargets)
    assert told.engines == [engine_b]
    assert ask(asys, registry, Route("m9", token="a"), Routes).entries == []     # not before the relay took it
    asys.tell(peer, SendAs(registry, RelayTargetsTaken(told.version)))          # not the relay: ignored
    assert ask(asys, registry, Route("m9", token="b"), Routes).entries == []
    asys.tell(relay, SendAs(registry, RelayTargetsTaken(told.version)))
    (entry,) = ask(asys, registry, Route("m9", token="c"), Routes).entries
    assert (entry.deployment, entry.engine, entry.via) == ("d9", engine_b, relay)
