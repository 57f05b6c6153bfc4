"""GatewayClient against scripted peers on the in-process system: the raw protocol's corners.

A real node cannot be made to cross its messages on ``simpleSystemBase`` (one thread delivers
them in order), so here the registry and the engines are scripted actors that answer with
exactly the messages a test names: chunks out of order, a terminal that overtakes its last
chunk, a poisoned message, an engine that falls silent or dies. The client under test is the
real one, over ``InProcessLink``; what it sends to its peers is recorded and asserted.
tests/unit/test_client_node.py runs it against a real node.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from thespian.actors import Actor, ActorExitRequest, PoisonMessage

from actors import errors as E
from actors.client import GatewayClient
from actors.core.frames import FrameCodec, chunk_body
from actors.core.records import FALLBACK_METADATA
from actors.core.routing import RoutingPolicy
from actors.node_link import InProcessLink
from actors.stream_receiver import StreamReceiver
from actors.testing.pipe_listener import PipeListener
from actors.runtime.protocol import (EngineCheck, EngineLiveness, NodeStatus, Route, RouteEntry, RouterRefusals,
                                     Routes, StatusRequest)
from actors.types import AttemptInfo, Cancel, Completed, Failed, InferenceRequest, TokenChunk, Usage
from harness import TEST_KEYRING

HI = [{"role": "user", "content": "hi"}]
Answer = Callable[[Any], list[Any]]
CODEC = FrameCodec(TEST_KEYRING)


def until(condition: Callable[[], Any], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s}s"
        time.sleep(0.002)


@dataclasses.dataclass
class Plan:
    """How a Peer answers one kind of message: ``answer(message) -> replies``."""

    kind: type
    answer: Answer


class Peer(Actor):
    """A scripted stand-in for an engine or a node's registry; keeps every message it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.answers: dict[type, Answer] = {}

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, Plan):
            self.answers[msg.kind] = msg.answer
        elif msg == "seen?":
            self.send(sender, list(self.seen))
        elif not isinstance(msg, ActorExitRequest):
            self.seen.append(msg)
            for reply in self.answers.get(type(msg), lambda _: [])(msg):
                self.send(sender, reply)


# -- what a scripted engine answers, as functions of the request ---------------------------------

def chunk(seq: int, text: str) -> Answer:
    return lambda r: [TokenChunk(r.request_id, seq, text)]


def done(text: str = "ok", chunks: int | None = 0, **kw: Any) -> Answer:
    return lambda r: [Completed(r.request_id, text, "stop", Usage(3, 2), chunks=chunks, deployment="d1", **kw)]


def failed(error: E.InferenceError, chunks: int | None = 0, sent: bool = True, deployment: str = "d1",
           attempts: int = 1) -> Answer:
    log = [AttemptInfo(deployment, error.kind, error.status, 0.0, sent)] * attempts
    return lambda r: [Failed(r.request_id, error, attempts=attempts, chunks=chunks, attempt_log=log)]


def poisoned() -> Answer:
    return lambda r: [PoisonMessage(r, "Traceback: boom in the engine")]


def replies(*parts: Answer) -> Answer:
    """One request's answer: these messages, in this order."""
    return lambda r: [m for part in parts for m in part(r)]


def in_turn(*answers: Answer) -> Answer:
    """Each request gets the next answer; the last repeats."""
    left = list(answers)
    return lambda r: (left.pop(0) if len(left) > 1 else left[0])(r)


def SILENT(request: Any) -> list[Any]:   # an engine that never answers
    return []


class Scripted:
    """A scripted node (routes, liveness) and its scripted engines, and clients over an InProcessLink."""

    def __init__(self, asys: Any) -> None:
        self.asys = asys
        self.node = asys.createActor(Peer)
        self.routes: dict[str, list[RouteEntry]] = {}
        self.restarting: dict[str, list[str]] = {}
        self.policy = RoutingPolicy()
        self.dead: dict[str, str] = {}     # engine address -> why the node says it is gone
        self.plan(self.node, Route, lambda m: [Routes(m.model, list(self.routes.get(m.model, [])), token=m.token,
                                                      restarting=self.restarting.get(m.model, []),
                                                      policy=self.policy)])
        self.plan(self.node, EngineCheck, lambda m: [EngineLiveness(m.token, m.engine, str(m.engine) not in self.dead,
                                                                    self.dead.get(str(m.engine), ""))])
        self.clients: list[GatewayClient] = []

    def plan(self, peer: Any, kind: type, answer: Answer) -> None:
        self.asys.tell(peer, Plan(kind, answer))

    def kill(self, engine: Any, why: str = "engine d1/0 died; restarting") -> None:
        """The engine exits (what is sent to it is lost) and the node says so when asked."""
        self.asys.tell(engine, ActorExitRequest())
        self.dead[str(engine)] = why

    def engine(self, deployment: str = "d1", answer: Answer = SILENT, *, model: str | None = None,
               **entry: Any) -> Any:
        address = self.asys.createActor(Peer)
        self.plan(address, InferenceRequest, answer)
        entry.setdefault("max_retries", 2)
        self.routes.setdefault(model or deployment, []).append(
            RouteEntry(deployment, model or deployment, address, "n1", **entry))
        return address

    def seen(self, peer: Any, kind: type = object) -> list[Any]:
        return [m for m in self.asys.ask(peer, "seen?", 5) if isinstance(m, kind)]

    def client(self, **kw: Any) -> GatewayClient:
        kw = {"timeout_s": 5.0, "liveness_after_s": 0.05, "straggler_wait_s": 0.05, "terminal_grace_s": 0.05,
              "route_ttl_s": 60.0, **kw}
        client = GatewayClient(link=InProcessLink(self.asys, registry=self.node), **kw)
        self.clients.append(client)
        return client


@pytest.fixture
def scripted(asys):
    rig = Scripted(asys)
    yield rig
    for client in rig.clients:
        client.close()


# -- the order of what arrives -------------------------------------------------------------------

def test_chunks_are_yielded_in_seq_order_whatever_order_they_arrive_in(scripted):
    scripted.engine(answer=replies(chunk(2, "c"), chunk(0, "a"), chunk(1, "b"), done("abc", chunks=3)))
    gw = scripted.client()
    with gw.stream("d1", HI) as stream:
        got = [(c.seq, c.text) for c in stream]
    assert got == [(0, "a"), (1, "b"), (2, "c")]
    assert stream.result.text == "abc" and stream.chunks == [TokenChunk(stream.request_id, i, t)
                                                             for i, t in enumerate("abc")]


def test_a_terminal_that_overtook_its_last_chunk_waits_for_it(scripted):
    scripted.engine(answer=replies(chunk(0, "a"), done("ab", chunks=2), chunk(1, "b")))
    gw = scripted.client(straggler_wait_s=5.0)   # the straggler comes: no waiting that long
    stream = gw.stream("d1", HI)
    assert [c.text for c in stream] == ["a", "b"] and stream.result.text == "ab"


def test_a_straggler_that_never_comes_leaves_the_answer_to_the_terminal(scripted):
    engine = scripted.engine(answer=replies(chunk(0, "a"), chunk(2, "c"), done("abc", chunks=3)))
    gw = scripted.client()
    stream = gw.stream("d1", HI)
    assert [c.text for c in stream] == ["a"]         # seq 1 never came: 2 is not handed over out of order
    assert stream.result.text == "abc" and stream.closed
    assert scripted.seen(engine, Cancel) == []        # the call ended with its terminal: nothing to cancel


def test_a_chunk_after_an_uncounted_terminal_is_not_part_of_the_answer(scripted):
    # chunks=None: the gateway cannot say how many the caller got; the answer is what came before.
    scripted.engine(answer=in_turn(replies(chunk(0, "a"), done("a", chunks=None), chunk(1, "late")),
                                   done("second")))
    gw = scripted.client()
    first = gw.stream("d1", HI)
    assert [c.text for c in first] == ["a"]
    second = gw.complete("d1", HI)    # the late chunk of the first call reaches this thread: filed, then dropped
    assert second.text == "second" and second.request_id != first.request_id


def test_a_poisoned_message_is_an_internal_error_and_the_call_is_cancelled(scripted):
    engine = scripted.engine(answer=poisoned())
    gw = scripted.client()
    with pytest.raises(E.InternalError, match="the gateway failed on a message: Traceback: boom"):
        gw.complete("d1", HI)
    assert [c.request_id for c in scripted.seen(engine, Cancel)] == \
        [r.request_id for r in scripted.seen(engine, InferenceRequest)]


# -- liveness: an engine that is silent ------------------------------------------------------------

def test_a_silent_live_engine_times_out_past_the_deadline_and_is_told_to_cancel(scripted):
    engine = scripted.engine(answer=SILENT)
    gw = scripted.client()
    with pytest.raises(E.GatewayTimeout, match="within its deadline") as caught:
        gw.complete("d1", HI, timeout_s=0.1)
    (request,) = scripted.seen(engine, InferenceRequest)
    assert caught.value.request_id == request.request_id
    assert [c.request_id for c in scripted.seen(engine, Cancel)] == [request.request_id]
    assert not caught.value.retryable     # it was sent: a repeat would duplicate it


def test_resends_to_engines_that_keep_dying_are_bounded(scripted):
    scripted.kill(scripted.engine(answer=SILENT))     # and the node keeps routing to it
    gw = scripted.client()
    with pytest.raises(E.EngineCrashed) as caught:
        gw.complete("d1", HI)
    assert len(scripted.seen(scripted.node, EngineCheck)) == 3   # the first send and CRASH_RESENDS more
    assert not caught.value.retryable                          # the gateway repeated it already


def test_a_stream_whose_engine_died_after_a_token_ends_with_engine_crashed_keeping_its_chunks(scripted):
    engine = scripted.engine(answer=replies(chunk(0, "a")))
    gw = scripted.client()
    stream = gw.stream("d1", HI)
    iterator = iter(stream)
    assert next(iterator).text == "a"
    scripted.kill(engine)
    with pytest.raises(E.EngineCrashed) as caught:
        next(iterator)
    assert not caught.value.retryable and [c.text for c in stream.chunks] == ["a"]
    assert len(scripted.seen(scripted.node, Route)) == 1   # a token reached the caller: never re-sent


def test_an_engine_restarting_is_waited_for_within_the_deadline(scripted):
    scripted.restarting["d1"] = ["d1"]
    gw = scripted.client()
    with pytest.raises(E.EngineCrashed, match="the engine of d1 is restarting") as caught:
        gw.complete("d1", HI, timeout_s=0.15)
    assert caught.value.retryable
    with pytest.raises(E.NotFound, match="no deployment serves model 'nothing'"):
        gw.complete("nothing", HI)


# -- leaving a call ----------------------------------------------------------------------------------

def test_leaving_a_stream_in_each_way_cancels_it_at_its_engine(scripted):
    engine = scripted.engine(answer=replies(chunk(0, "a")))   # then silent: the call is still running
    gw = scripted.client()

    for _ in gw.stream("d1", HI):
        break                                             # a for loop left early
    with gw.stream("d1", HI) as stream:
        next(iter(stream))                                # a with block left
    closed = gw.stream("d1", HI)
    iterator = iter(closed)
    next(iterator)
    closed.close()                                        # close()
    assert list(iterator) == [] and list(closed) == [] and closed.closed
    dropped = gw.stream("d1", HI)
    next(iter(dropped))
    del dropped                                           # dropped without a word
    gc.collect()

    sent = [r.request_id for r in scripted.seen(engine, InferenceRequest)]
    assert len(sent) == 4 and [c.request_id for c in scripted.seen(engine, Cancel)] == sent


def test_cancel_goes_to_the_engine_holding_the_call_or_to_every_routed_engine(scripted):
    a = scripted.engine("d1", answer=replies(chunk(0, "a")), model="m")
    b = scripted.engine("d2", answer=replies(chunk(0, "b")), model="m")
    gw = scripted.client()
    stream = gw.stream("m", HI)
    iterator = iter(stream)
    next(iterator)
    stream.cancel()                          # as another thread would: the engine then ends the call
    held_by = a if scripted.seen(a, InferenceRequest) else b
    assert [c.request_id for c in scripted.seen(held_by, Cancel)] == [stream.request_id]
    stream.close()
    gw.cancel("req_unknown")                 # not in flight here: every engine of the cached routes is told
    assert all(scripted.seen(e, Cancel)[-1].request_id == "req_unknown" for e in (a, b))


def test_a_stream_is_iterated_once_and_text_reads_it_whole(scripted):
    scripted.engine(answer=replies(chunk(0, "a"), chunk(1, "b"), done("ab", chunks=2)))
    gw = scripted.client()
    stream = gw.stream("d1", HI)
    assert stream.text() == "ab" and list(stream) == [] and "2 chunks, done" in repr(stream)
    assert stream.deployment == "d1" and not stream.fallback


# -- failures, the router's moves, and its refusals -------------------------------------------------

def test_a_failed_terminal_is_raised_with_its_attempts_and_the_callers_verdict(scripted):
    scripted.engine(answer=failed(E.BadRequest("bad field", status=400)))
    gw = scripted.client()
    with pytest.raises(E.BadRequest, match="bad field") as caught:
        gw.complete("d1", HI)
    assert [(a.deployment, a.error_kind, a.sent) for a in caught.value.attempt_log] == [("d1", "bad_request", True)]
    assert not caught.value.retryable


def test_a_deployment_that_failed_is_passed_over_for_the_next_of_its_group(scripted):
    first = scripted.engine("d1", answer=failed(E.ServerError("503", status=503, retryable=True), attempts=2),
                            model="m")
    second = scripted.engine("d2", answer=done("served"), model="m", weight=0.0)   # zero weight: tried second
    gw = scripted.client()
    result = gw.complete("m", HI)
    assert result.text == "served" and result.attempts == 3    # two at d1, then d2's
    assert [(a.deployment, a.error_kind) for a in result.attempt_log] == \
        [("d1", "server_error"), ("d1", "server_error"), ("d2", "")]
    (retry,) = scripted.seen(second, InferenceRequest)
    assert retry.retry_budget == 1     # d1 spent one retry of the request's one budget (max_retries 2)
    assert len(scripted.seen(first, InferenceRequest)) == 1


def test_a_call_that_is_not_idempotent_never_goes_elsewhere_once_sent(scripted):
    scripted.engine("d1", answer=failed(E.ServerError("503", status=503, retryable=True)), model="m")
    second = scripted.engine("d2", answer=done(), model="m", weight=0.0)
    gw = scripted.client()
    with pytest.raises(E.ServerError):
        gw.complete("m", HI, idempotent=False)
    assert scripted.seen(second, InferenceRequest) == []
    # Refused before anything was sent: safe to take elsewhere even so.
    scripted.plan(scripted.routes["m"][0].engine, InferenceRequest,
                  failed(E.QueueFull("full", retryable=True), sent=False))
    assert gw.complete("m", HI, idempotent=False).text == "ok"


def test_fallbacks_follow_the_error_and_mark_the_call(scripted):
    scripted.engine("d1", answer=failed(E.ServerError("503", status=503, retryable=True)), model="m")
    backup = scripted.engine("b1", answer=done("from the backup"), model="backup")
    scripted.policy = RoutingPolicy(fallbacks={"m": ["gone", "backup"]})
    gw = scripted.client()
    stream = gw.stream("m", HI)
    assert stream.text() == "from the backup" and stream.fallback and stream.deployment == "b1"
    assert [(a.deployment, a.error_kind, a.sent) for a in stream.result.attempt_log] == \
        [("d1", "server_error", True), ("gone", "not_found", False), ("b1", "", True)]
    assert stream.result.attempts == 2
    (request,) = scripted.seen(backup, InferenceRequest)
    assert request.metadata[FALLBACK_METADATA] == "m"      # the serving engine counts it as a fallback
    # The caller's own list replaces the configured one; an empty one means none.
    with pytest.raises(E.ServerError):
        gw.complete("m", HI, fallbacks=[])


def test_the_router_refuses_a_group_whose_engines_pushed_a_refusal_and_reports_it(scripted):
    until = time.time() + 30
    open_ = E.CircuitOpen("circuit open for openai e", provider="openai", retryable=True)
    engine = scripted.engine("d1", answer=done(), refusal=open_, refusal_until_unix=until)
    gw = scripted.client()
    with pytest.raises(E.CircuitOpen) as caught:
        gw.complete("d1", HI)
    assert scripted.seen(engine, InferenceRequest) == []                 # nothing was sent
    assert 29 < caught.value.retry_after_s <= 30                          # as of the router's clock
    assert [(a.deployment, a.sent) for a in caught.value.attempt_log] == [("d1", False)]
    assert caught.value.retryable                                         # nothing sent: the caller may repeat
    assert scripted.seen(scripted.node, RouterRefusals)[0].counts == {"d1": {"CircuitOpen": 1}}


def refused_too_long(scripted: Scripted, times: int) -> GatewayClient:
    """A client whose router refused ``times`` prompts too long for d1's window."""
    scripted.engine("d1", max_input_tokens=1)
    gw = scripted.client()
    for _ in range(times):
        with pytest.raises(E.ContextLengthExceeded):
            gw.complete("d1", [{"role": "user", "content": "a prompt far longer than one token"}])
    return gw


def reported(scripted: Scripted) -> int:
    return sum(r.counts["d1"]["ContextLengthExceeded"] for r in scripted.seen(scripted.node, RouterRefusals))


def test_refusals_are_reported_at_most_every_quarter_second_and_flushed_on_close(scripted):
    gw = refused_too_long(scripted, 3)
    reports = scripted.seen(scripted.node, RouterRefusals)
    assert reports[0].counts == {"d1": {"ContextLengthExceeded": 1}}   # the first at once, the rest held back
    gw.close()                                         # the rest go out with the close, not lost
    assert reported(scripted) == 3


def test_refusals_held_back_go_out_on_their_timer(scripted):
    refused_too_long(scripted, 2)
    end = time.monotonic() + 5
    while reported(scripted) < 2:
        assert time.monotonic() < end, "the held-back refusal was never reported"
        time.sleep(0.02)


def test_an_engine_that_answered_circuit_open_is_skipped_by_the_router_until_its_retry_time(scripted):
    retry_at_ms = int((time.time() + 30) * 1000)
    open_ = E.CircuitOpen("circuit open for openai e", provider="openai", retryable=True, retry_at_unix_ms=retry_at_ms)
    engine = scripted.engine("d1", answer=failed(open_, sent=False))
    gw = scripted.client()
    with pytest.raises(E.CircuitOpen):
        gw.complete("d1", HI)                     # the engine's own answer
    with pytest.raises(E.CircuitOpen) as caught:
        gw.complete("d1", HI)                     # the router repeats it without asking the engine
    assert len(scripted.seen(engine, InferenceRequest)) == 1
    assert 29 < caught.value.retry_after_s <= 30
    assert scripted.seen(scripted.node, RouterRefusals)[0].counts == {"d1": {"CircuitOpen": 1}}


def test_lookups_the_node_does_not_answer_are_gateway_unavailable(scripted):
    gw = scripted.client()
    with pytest.raises(E.GatewayUnavailable, match="the in-process node did not answer a status request"):
        gw.status(timeout_s=0.05)
    scripted.plan(scripted.node, StatusRequest, lambda m: [NodeStatus("n1", 0.0, [], [], [], token=m.token)])
    assert gw.status().node == "n1"


def test_a_link_carries_the_connection_settings_so_they_cannot_also_be_given(scripted):
    with pytest.raises(TypeError, match="with link=..., they are the link's own"):
        GatewayClient(5000, link=InProcessLink(scripted.asys, registry=scripted.node))
    with pytest.raises(TypeError, match="they are the link's own"):
        GatewayClient(link=InProcessLink(scripted.asys, registry=scripted.node), stream_channel=False)


# -- pushed chunks (Stream.push_to) ----------------------------------------------------------------

def test_pushed_chunks_reach_the_callback_in_order_once_and_the_iteration_only_waits_for_the_end(scripted):
    scripted.engine(answer=replies(chunk(0, "a"), chunk(2, "c"), chunk(1, "b"), chunk(1, "b"), done("abc", chunks=3)))
    gw = scripted.client()
    got: list[tuple[int, str]] = []
    with gw.stream("d1", HI) as stream:
        stream.push_to(lambda c: got.append((c.seq, c.text)))
        assert list(stream) == []                  # nothing yielded: every chunk went to the callback
    assert got == [(0, "a"), (1, "b"), (2, "c")]   # in seq order, the repeated 1 once
    assert stream.result.text == "abc" and stream.chunks == [] and "3 chunks, done" in repr(stream)


def test_pushing_may_begin_between_two_chunks_and_nothing_is_handed_over_twice(scripted):
    scripted.engine(answer=replies(chunk(0, "a"), chunk(1, "b"), chunk(2, "c"), done("abc", chunks=3)))
    gw = scripted.client()
    pushed: list[str] = []
    stream = gw.stream("d1", HI)
    chunks = iter(stream)
    assert next(chunks).text == "a"
    stream.push_to(lambda c: pushed.append(c.text))
    assert list(chunks) == [] and pushed == ["b", "c"] and stream.result.text == "abc"
    assert [c.text for c in stream.chunks] == ["a"]     # what was yielded is kept; what was pushed is not


def test_what_the_callback_raises_ends_the_iteration_and_cancels_the_call_with_no_call_after(scripted):
    engine = scripted.engine(answer=replies(chunk(0, "a"), chunk(1, "b"), chunk(2, "c")))   # then silent
    gw = scripted.client()
    calls: list[str] = []

    def refuse_b(c: TokenChunk) -> None:
        calls.append(c.text)
        if c.text == "b":
            raise ConnectionError("the caller went away")

    stream = gw.stream("d1", HI)
    stream.push_to(refuse_b)
    with pytest.raises(ConnectionError, match="the caller went away"):
        list(stream)
    assert calls == ["a", "b"] and stream.closed
    assert [c.request_id for c in scripted.seen(engine, Cancel)] == [stream.request_id]


class ChannelLink(InProcessLink):
    """The in-process link with a stream channel: a receiver over an in-memory listener."""

    def __init__(self, system: Any, registry: Any, receiver: StreamReceiver) -> None:
        super().__init__(system, registry=registry)
        self.receiver = receiver

    def stream_receiver(self) -> StreamReceiver | None:
        return self.receiver


def test_chunks_on_the_channel_are_pushed_by_its_thread_in_order_with_those_sent_as_messages(scripted):
    listener = PipeListener()
    receiver = StreamReceiver(TEST_KEYRING, listener=listener)
    worker = listener.connect()
    worker.sendall(CODEC.encode({"hello": receiver.token}))
    channels: list[Any] = []

    def answer(request: InferenceRequest) -> list[Any]:
        channels.append(request.channel)
        # The first chunk as a message (its frame failed), then a terminal that overtakes the other two.
        return [TokenChunk(request.request_id, 0, "a"), Completed(request.request_id, "abc", "stop", Usage(3, 3),
                                                                   chunks=3, deployment="d1")]

    scripted.engine(answer=answer)
    # A long straggler wait: the iteration must end once the last chunk is pushed, not after it.
    gw = GatewayClient(link=ChannelLink(scripted.asys, scripted.node, receiver), timeout_s=30.0,
                       straggler_wait_s=30.0, route_ttl_s=60.0)
    pushed: list[tuple[int, str]] = []
    ended: list[Any] = []
    try:
        stream = gw.stream("d1", HI)
        stream.push_to(lambda c: pushed.append((c.seq, c.text)))
        reader = threading.Thread(target=lambda: ended.append(list(stream)), daemon=True)
        reader.start()
        until(lambda: pushed, "the first chunk, from its message")
        for seq, text in ((2, "c"), (1, "b")):   # the rest on the channel, out of order, after the terminal
            worker.sendall(CODEC.encode(chunk_body(stream.request_id, seq, text, [])))
        reader.join(10.0)
        assert not reader.is_alive(), "the iteration did not end once every chunk was pushed"
    finally:
        gw.close()
        receiver.close()
    assert channels == [receiver.spec]
    assert ended == [[]] and stream.result.text == "abc"
    assert pushed == [(0, "a"), (1, "b"), (2, "c")] and receiver.delivered == 2
