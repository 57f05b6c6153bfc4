"""A caller's links to its engines, over pipes: the engine's end (runtime/caller_links.py) takes calls
and cancels only and sends each call's terminal back on the link it came on, or by Thespian; the
caller's end (actors/caller_links.py) uses a link only once the engine its route named greeted it,
writes whole frames or none, and its terminals reach the thread that waits for them."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from actors.caller_links import RETRY_AFTER_S, CallerLinks
from actors.runtime import control_link as C
from actors.runtime.caller_links import MAX_CALLER_LINKS, CallerLinks as EngineSide
from actors.runtime.protocol import FirstTokenHeard, LinkHello, WorkerReady
from actors.stream_receiver import Inbox, StreamReceiver
from actors.testing.pipe_listener import PipeListener
from actors.types import Cancel, Completed, Failed, InferenceRequest, Usage
from harness import TEST_KEYRING
from test_control_link import ENGINE, Clock, ThespianSide, Timers, addr, pair, serializer

CALLER, OTHER_CALLER = addr(42001), addr(42002)


def request(i: int) -> InferenceRequest:
    return InferenceRequest(model="m", messages=[{"role": "user", "content": "hi"}], request_id=f"r{i}")


def done(i: int) -> Completed:
    return Completed(f"r{i}", "ok", "stop", Usage(1, 1), chunks=0, deployment="d1")


class Engine(EngineSide, ThespianSide):
    def __init__(self) -> None:
        super().__init__()
        self.myAddress, self.timers, self.handled = ENGINE, Timers(), []

    def receiveMessage(self, message: Any, sender: Any) -> None:
        self.handled.append((sender, message))


@pytest.fixture
def linked():
    """(engine, its end of a caller's link, the caller's end): the caller has sent r0 on it."""
    made = []
    caller_end, engine_end = pair()
    made += [caller_end, engine_end]
    caller = C.ControlLink(caller_end, serializer(tagged=False), node_only=False)
    engine_link = C.ControlLink(engine_end, serializer(), node_only=False)
    engine = Engine()
    assert caller.send(CALLER, request(0))
    assert engine._caller_linked(engine_link, engine_link.receive())
    yield engine, engine_link, caller
    for end in made:
        end.close()


# -- the engine's end -----------------------------------------------------------------------------

def test_a_call_on_a_link_is_handled_and_its_terminal_goes_back_on_that_link_to_its_sender(linked):
    engine, engine_link, caller = linked
    assert engine.handled == [(CALLER, request(0))] and engine.callers == [engine_link]
    engine._reply(CALLER, done(0))
    engine.flush_links()                                  # as the handler returns
    assert engine.by_thespian == []
    (sender, message), = caller.receive()
    assert sender == ENGINE and message.request_id == "r0"


def test_a_terminal_for_another_sender_or_another_call_goes_by_thespian(linked):
    engine, engine_link, caller = linked
    engine._reply(OTHER_CALLER, done(0))                  # not the address the call named
    engine._reply(CALLER, done(9))                        # a call that never came on the link
    assert [(to, m.request_id) for to, m in engine.by_thespian] == [(OTHER_CALLER, "r0"), (CALLER, "r9")]
    assert caller.receive() == []


@pytest.mark.parametrize("message", [WorkerReady([0], 1), FirstTokenHeard("r0", 1), done(0)])
def test_a_caller_link_carrying_anything_but_calls_and_cancels_is_closed_unhandled(linked, message):
    engine, engine_link, caller = linked
    assert caller.send(CALLER, Cancel("r0"))
    assert caller.send(CALLER, message)
    assert caller.send(CALLER, request(1))                # after the refused one: never read
    engine._read_callers({engine_link.fileno()})
    assert [type(m).__name__ for _, m in engine.handled] == ["InferenceRequest", "Cancel"]
    assert engine_link.closed and engine.callers == [] and engine.caller_refused == 1


def test_a_terminal_owed_on_a_closed_link_goes_by_thespian_to_its_caller(linked):
    engine, engine_link, caller = linked
    engine_link.close("closed by its peer")
    engine._reply(CALLER, done(0))
    assert [(to, m.request_id) for to, m in engine.by_thespian] == [(CALLER, "r0")]


def test_terminals_a_stalled_link_did_not_write_go_by_thespian_to_each_ones_caller(linked):
    engine, engine_link, caller = linked
    assert caller.send(OTHER_CALLER, request(1))
    engine._read_callers({engine_link.fileno()})
    engine_link.sock.send = lambda data: 0                # the caller stopped reading
    engine_link.clock = clock = Clock()
    engine._reply(CALLER, done(0))
    engine._reply(OTHER_CALLER, done(1))
    engine.flush_links()
    assert engine.by_thespian == [] and ("control_flush", pytest.approx(0.002)) in engine.timers.due
    clock.now += C.STALL_S + 1
    engine.timer_control_flush(None)
    assert [(to, m.request_id) for to, m in engine.by_thespian] == [(CALLER, "r0"), (OTHER_CALLER, "r1")]
    assert engine.callers == []


def test_an_engine_takes_at_most_its_number_of_caller_links(linked):
    engine, engine_link, caller = linked
    engine.callers += [engine_link] * (MAX_CALLER_LINKS - 1)
    one_more = C.ControlLink(pair()[1], serializer(), node_only=False)
    try:
        assert not engine._caller_linked(one_more, [(CALLER, request(5))])
        assert all(sender != CALLER or m.request_id != "r5" for sender, m in engine.handled)
    finally:
        one_more.sock.close()


# -- the caller's end ---------------------------------------------------------------------------

class Engines:
    """Connections the caller's CallerLinks makes, each answered by a scripted engine end."""

    def __init__(self, hello_from: Any = ENGINE) -> None:
        self.hello_from = hello_from
        self.ends: list[C.ControlLink] = []
        self.made: list[Any] = []

    def connect(self, port: int, wire: Any, node_only: bool = True) -> C.ControlLink:
        caller_end, engine_end = pair()
        self.made += [caller_end, engine_end]
        end = C.ControlLink(engine_end, serializer(), node_only=False)
        if self.hello_from is not None:
            assert end.send(self.hello_from, LinkHello(self.hello_from))
        self.ends.append(end)
        return C.ControlLink(caller_end, wire, node_only=node_only)

    def close(self) -> None:
        for end in self.made:
            end.close()


@pytest.fixture
def caller_side():
    listener = PipeListener()
    receiver = StreamReceiver(TEST_KEYRING, listener=listener)
    made: list[tuple[CallerLinks, Engines]] = []

    def make(hello_from: Any = ENGINE, clock: Any = time.monotonic) -> tuple[CallerLinks, Engines]:
        engines = Engines(hello_from)
        links = CallerLinks(serializer(tagged=False), receiver, connector=engines.connect, clock=clock)
        made.append((links, engines))
        return links, engines

    yield make, receiver
    for links, engines in made:
        links.close()
        engines.close()
    receiver.close()


def test_a_call_goes_on_the_link_and_its_terminal_reaches_the_inbox_of_the_thread_that_waits(caller_side):
    make, receiver = caller_side
    links, engines = make()
    inbox = Inbox()
    receiver.route("r0", inbox)
    try:
        assert links.send(ENGINE, 40000, CALLER, request(0)) and links.linked(ENGINE)
        assert links.send(ENGINE, 40000, CALLER, Cancel("r0"))        # the same link: made once
        (end,) = engines.ends
        assert [(s, type(m).__name__) for s, m in end.receive()] == [(CALLER, "InferenceRequest"), (CALLER, "Cancel")]
        assert end.send(ENGINE, Failed("r9", None, 0, "d1"))          # a call nobody waits for here: dropped
        assert end.send(ENGINE, done(0))
        got: list[Any] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got += inbox.drain()
            time.sleep(0.002)
        assert [(type(m).__name__, m.request_id) for m in got] == [("Completed", "r0")]
    finally:
        inbox.close()


@pytest.mark.parametrize("hello_from", [None, addr(41999)], ids=["no greeting", "another engine"])
def test_a_link_whose_engine_is_not_the_one_the_route_named_is_never_used_and_not_retried_soon(caller_side,
                                                                                               hello_from):
    make, _ = caller_side
    clock = Clock()
    links, engines = make(hello_from, clock=clock)
    started = time.monotonic()
    assert not links.send(ENGINE, 40000, CALLER, request(0))          # the caller then sends by Thespian
    assert links.refused == 1 and not links.linked(ENGINE)
    assert all(end.receive() == [] for end in engines.ends)          # nothing of the call was written
    assert not links.send(ENGINE, 40000, CALLER, request(1)) and len(engines.ends) == 1   # not tried again yet
    clock.now += RETRY_AFTER_S + 1
    assert not links.send(ENGINE, 40000, CALLER, request(2)) and len(engines.ends) == 2
    assert time.monotonic() - started < 10


def test_without_a_control_port_a_call_goes_by_thespian(caller_side):
    make, _ = caller_side
    links, engines = make()
    assert not links.send(ENGINE, None, CALLER, request(0)) and engines.ends == []


@pytest.mark.parametrize("greeted", [True, False], ids=["made", "refused"])
def test_a_call_while_another_thread_makes_the_link_waits_for_it_then_goes_on_it_or_by_thespian(caller_side,
                                                                                                 greeted):
    """A fresh process's first burst: every call but the first arrives while the link is being made.
    Sent by Thespian meanwhile, a tenth of them got their first token over a second late."""
    make, _ = caller_side
    links, engines = make(ENGINE if greeted else None)
    entered, release = threading.Event(), threading.Event()
    connect = engines.connect

    def slow_connect(*args: Any, **kw: Any) -> C.ControlLink:
        entered.set()
        assert release.wait(10)
        return connect(*args, **kw)
    links.connector = slow_connect
    first: list[bool] = []
    second: list[bool] = []
    maker = threading.Thread(target=lambda: first.append(links.send(ENGINE, 40000, CALLER, request(1))))
    waiter = threading.Thread(target=lambda: second.append(links.send(ENGINE, 40000, OTHER_CALLER, request(2))))
    maker.start()
    try:
        assert entered.wait(10)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and second == []                      # waiting for the link, not gone by Thespian
    finally:
        release.set()
        maker.join(10)
        waiter.join(10)
    assert first == second == [greeted] and len(engines.ends) == 1     # one link made (or refused) for both
    if greeted:
        assert sorted(m.request_id for _, m in engines.ends[0].receive()) == ["r1", "r2"]
    else:
        assert engines.ends[0].receive() == [] and links.refused == 1  # both calls then go by Thespian


def test_a_link_closed_by_its_engine_is_dropped_and_the_next_call_goes_by_thespian(caller_side):
    make, receiver = caller_side
    clock = Clock()
    links, engines = make(clock=clock)
    assert links.send(ENGINE, 40000, CALLER, request(0))
    engines.ends[0].sock.close()                                       # the engine died
    deadline = time.monotonic() + 5
    while links.linked(ENGINE) and time.monotonic() < deadline:       # the receiver's thread sees it close
        time.sleep(0.002)
    assert not links.linked(ENGINE)
    assert not links.send(ENGINE, 40000, CALLER, request(1)) and len(engines.ends) == 1


def test_writers_on_one_link_from_many_threads_each_write_whole_frames(caller_side):
    make, _ = caller_side
    links, engines = make()
    assert links.send(ENGINE, 40000, CALLER, request(0))
    sent = []

    def write(t: int) -> None:
        for i in range(10):   # within what a pipe holds: its writability is another descriptor's than a socket's
            assert links.send(ENGINE, 40000, addr(43000 + t), request(1000 * t + i))
    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    end = engines.ends[0]
    deadline = time.monotonic() + 10
    while len(sent) < 41 and time.monotonic() < deadline:
        sent += end.receive()
    for thread in threads:
        thread.join()
    assert not end.closed and len(sent) == 41
    for t in range(4):   # each thread's calls in its own order
        assert [m.request_id for s, m in sent if s == addr(43000 + t)] == [f"r{1000 * t + i}" for i in range(10)]
