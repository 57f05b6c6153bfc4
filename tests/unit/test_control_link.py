"""The control link between an engine and its worker processes (runtime/control_link.py,
runtime/linked_actor.py), over pipes: the wire's own frames in order, only a node's tagged
frames believed, an outbox that never blocks and hands back, in order, what it could not write
whole, and an actor shell that sends by the link while it is up and by Thespian otherwise."""

from __future__ import annotations

import os
import pickle
import struct

import pytest
from thespian.actors import ActorAddress, ActorExitRequest, PoisonMessage
from thespian.system.transport.IPBase import TCPv4ActorAddress

from actors.runtime import control_link as C
from actors.runtime.linked_actor import LinkedActor, address_key
from actors.runtime.protocol import Dispatch, FirstToken, FirstTokenHeard, WorkerReady
from actors.security import trust, wire
from actors.testing.pipe_listener import PipeListener
from actors.types import Cancel, InferenceRequest

KEYS = wire.KeyRing(wire.parse_keys(f"test-run:{'r' * 43}", "test"), "test", scope=wire.CLUSTER)
NODE_KEY = wire.KeyRing(wire.parse_keys(f"node:{'n' * 43}", "test"), "test", scope=wire.CLUSTER).signing


def serializer(tagged: bool = True) -> wire.WireSerializer:
    """A node process's serializer (``tagged``), or a local client's, which holds no node key."""
    return wire.WireSerializer(KEYS, local=trust.LocalAddresses(can_bind=lambda host: False),
                               node_key=(lambda: NODE_KEY) if tagged else (lambda: None), enforce_table=lambda: False)


def addr(port: int) -> ActorAddress:
    return ActorAddress(TCPv4ActorAddress("127.0.0.1", port, external=True))


ENGINE, WORKER = addr(41001), addr(41002)


class Duplex:
    """One end of a connection made of two pipes, non-blocking like the links' sockets."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self.closed = False

    def fileno(self) -> int:
        return self.read_fd

    def send(self, data: bytes) -> int:
        return os.write(self.write_fd, data)

    def recv(self, size: int) -> bytes:
        return os.read(self.read_fd, size)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.read_fd)
            os.close(self.write_fd)


def pair() -> tuple[Duplex, Duplex]:
    a_read, b_write = os.pipe()
    b_read, a_write = os.pipe()
    return Duplex(a_read, a_write), Duplex(b_read, b_write)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def links():
    made: list[Duplex] = []

    def make(sender_tagged: bool = True, clock=None) -> tuple[C.ControlLink, C.ControlLink]:
        a, b = pair()
        made.extend((a, b))
        return (C.ControlLink(a, serializer(sender_tagged), clock=clock or Clock()),
                C.ControlLink(b, serializer(True), clock=clock or Clock()))
    yield make
    for end in made:
        end.close()


def request(i: int) -> InferenceRequest:
    return InferenceRequest(model="m", messages=[{"role": "user", "content": f"hi {i}"}], request_id=f"r{i}")


def test_messages_arrive_whole_in_order_with_their_sender(links):
    worker, engine = links()
    sent = [Dispatch(request(i), ENGINE, 1, 0, i) for i in range(50)] + [Cancel("r3"), FirstTokenHeard("r4", 1)]
    for message in sent:
        assert worker.send(WORKER, message)
    got = engine.receive()
    assert [type(m).__name__ for _, m in got] == [type(m).__name__ for m in sent]
    assert [m.request.request_id for _, m in got[:50]] == [f"r{i}" for i in range(50)]
    assert all(sender == WORKER for sender, _ in got)
    assert engine.received == worker.sent == 52 and not engine.closed


def test_a_frame_split_across_reads_waits_for_its_rest(links):
    worker, engine = links()
    frame = serializer().dumps((WORKER, Cancel("r1")))
    data = struct.pack(">I", len(frame)) + frame
    os.write(worker.sock.write_fd, data[:7])
    assert engine.receive() == []
    os.write(worker.sock.write_fd, data[7:])
    (sender, message), = engine.receive()
    assert sender == WORKER and message.request_id == "r1"


def test_a_frame_from_a_process_outside_the_node_closes_the_link(links):
    client, engine = links(sender_tagged=False)   # signed with the cluster key, but no node tag
    assert client.send(WORKER, Cancel("r1"))
    assert engine.receive() == []
    assert engine.closed and "not tagged" in engine.why


def test_an_altered_frame_closes_the_link_and_nothing_of_it_is_handed_on(links):
    worker, engine = links()
    frame = bytearray(serializer().dumps((WORKER, Cancel("r1"))))
    frame[-40] ^= 1
    os.write(worker.sock.write_fd, struct.pack(">I", len(frame)) + bytes(frame))
    assert engine.receive() == [] and engine.closed and "verify" in engine.why


def test_a_signed_frame_holding_a_class_off_the_allow_list_is_refused(links, tmp_path):
    worker, engine = links()
    target = tmp_path / "created"

    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))
    node = serializer()
    payload = wire.MAGIC_NODE + node._header[4:] + pickle.dumps((WORKER, Evil()), protocol=4)
    frame = payload + KEYS.signing.mac(payload) + NODE_KEY.mac(payload)
    os.write(worker.sock.write_fd, struct.pack(">I", len(frame)) + frame)
    assert engine.receive() == [] and engine.closed
    assert not target.exists()


def test_a_declared_length_over_the_limit_closes_the_link(links):
    worker, engine = links()
    os.write(worker.sock.write_fd, struct.pack(">I", C.MAX_FRAME_BYTES + 1))
    assert engine.receive() == [] and engine.closed and "bytes" in engine.why


def test_a_peer_that_stops_reading_leaves_the_rest_in_the_outbox_until_the_link_gives_up(links):
    clock = Clock()
    worker, engine = links(clock=clock)
    big = [Dispatch(request(i), ENGINE, 1, 0, i) for i in range(5)]
    for message in big:
        message.request.messages = [{"role": "user", "content": "x" * 40_000}]   # more than a pipe holds
    for message in big:
        assert worker.send(WORKER, message)          # never blocks
    assert worker.pending and not worker.closed
    clock.now += C.STALL_S / 2
    worker.flush()
    assert not worker.closed                          # behind, not yet given up on
    clock.now += C.STALL_S
    worker.flush()
    assert worker.closed and "read nothing" in worker.why
    stranded = worker.stranded()
    assert stranded and [m.request.request_id for _, m in stranded] == [m.request.request_id for m in big][-len(stranded):]
    # What the peer got is whole frames only, and exactly those not handed back.
    got = engine.receive()
    assert [m.request.request_id for _, m in got] + [m.request.request_id for _, m in stranded] == \
        [m.request.request_id for m in big]
    assert not worker.send(WORKER, Cancel("r0"))      # closed: the caller sends it another way


def test_a_message_too_large_for_a_frame_is_left_to_thespian(links, monkeypatch):
    worker, _ = links()
    monkeypatch.setattr(C, "MAX_FRAME_BYTES", 1000)
    message = Dispatch(request(0), ENGINE, 1, 0, 0)
    message.request.messages = [{"role": "user", "content": "x" * 2000}]
    assert not worker.send(WORKER, message) and not worker.closed and not worker.pending


def test_the_listener_closes_connections_that_do_not_name_their_process_in_time():
    clock, listener = Clock(), PipeListener()
    control = C.ControlListener(serializer(), listener=listener, clock=clock)
    try:
        clients = [listener.connect() for _ in range(C.MAX_PENDING + 3)]
        control.accept()
        assert len(control.waiting) == C.MAX_PENDING and control.refused == 3
        clock.now += C.HELLO_TIMEOUT_S + 0.1
        control.expire()
        assert control.waiting == [] and control.refused == 3 + C.MAX_PENDING
        for client in clients:
            client.close()
    finally:
        control.close()


# -- the actor shell -------------------------------------------------------------------------


class Timers:
    def __init__(self) -> None:
        self.due: list[tuple[str, float]] = []

    def after(self, name: str, delay: float, key=None) -> None:
        self.due.append((name, delay))


class ThespianSide:
    """What Thespian's Actor gives LinkedActor: ``send``, recorded."""

    def __init__(self) -> None:
        self.by_thespian: list[tuple[object, object]] = []

    def send(self, target, message) -> None:
        self.by_thespian.append((target, message))


class Actor(LinkedActor, ThespianSide):
    def __init__(self, me: ActorAddress) -> None:
        super().__init__()
        self.myAddress, self.timers, self.handled = me, Timers(), []

    def receiveMessage(self, message, sender):
        if isinstance(message, Cancel) and message.request_id == "boom":
            raise RuntimeError("a handler bug")
        self.handled.append((sender, message))


@pytest.fixture
def actors(links):
    worker_link, engine_link = links()
    worker, engine = Actor(WORKER), Actor(ENGINE)
    worker._link(ENGINE, worker_link)
    engine._link(WORKER, engine_link)
    return worker, engine, worker_link, engine_link


def test_an_actor_sends_by_its_link_and_handles_what_arrives_as_thespian_would(actors):
    worker, engine, worker_link, engine_link = actors
    worker.send(ENGINE, WorkerReady([0, 1], 123))
    worker.send(addr(41999), Cancel("elsewhere"))             # no link to that address: Thespian
    assert [type(m).__name__ for _, m in worker.by_thespian] == ["Cancel"]
    assert engine_link.receive() == []                        # queued until the handler returns
    worker.flush_links()
    engine._read_links({engine_link.fileno()})
    assert [(s, type(m).__name__) for s, m in engine.handled] == [(WORKER, "WorkerReady")]


def test_a_handler_that_raises_answers_its_sender_with_a_poison_message_by_thespian(actors):
    worker, engine, worker_link, engine_link = actors
    worker.send(ENGINE, Cancel("boom"))
    worker.flush_links()
    engine._read_links({engine_link.fileno()})
    (target, poison), = engine.by_thespian     # Thespian's own message: Thespian carries it
    assert target == WORKER and isinstance(poison, PoisonMessage) and poison.poisonMessage.request_id == "boom"
    assert engine.linked(WORKER)


def test_thespian_s_own_messages_never_go_on_a_link(actors):
    worker, engine, worker_link, engine_link = actors
    engine.send(WORKER, ActorExitRequest())
    assert [type(m).__name__ for _, m in engine.by_thespian] == ["ActorExitRequest"]
    assert worker_link.receive() == []


def test_a_message_claiming_another_sender_closes_the_link(actors):
    worker, engine, worker_link, engine_link = actors
    worker_link.send(addr(41777), Cancel("r1"))               # written as if from another actor
    engine._read_links({engine_link.fileno()})
    assert engine.handled == [] and not engine.linked(WORKER)


def test_when_a_link_fails_what_it_held_goes_by_thespian_in_order_and_so_does_the_rest(actors):
    worker, engine, worker_link, engine_link = actors
    worker_link.sock.send = lambda data: 0               # the peer stopped reading
    worker_link.clock = clock = Clock()
    worker.send(ENGINE, Cancel("r1"))
    worker.send(ENGINE, Cancel("r2"))
    worker.flush_links()
    assert worker.by_thespian == [] and ("control_flush", pytest.approx(0.002)) in worker.timers.due
    clock.now += C.STALL_S + 1
    worker.send(ENGINE, Cancel("r3"))
    worker.send(ENGINE, Cancel("r4"))
    worker.flush_links()
    assert [m.request_id for _, m in worker.by_thespian] == ["r1", "r2", "r3", "r4"]
    assert not worker.linked(ENGINE)


def test_an_address_without_hashable_details_is_never_linked():
    class Placeholder:
        addressDetails = None
        __hash__ = None  # type: ignore[assignment]
    details = Placeholder()
    key = address_key(type("A", (), {"addressDetails": details})())
    assert key[0] == "never linked"
    assert address_key(addr(41001)) == address_key(addr(41001))


def test_a_message_that_cannot_be_pickled_is_left_to_thespian_and_the_link_stays(links):
    worker, engine = links()
    assert not worker.send(WORKER, Cancel(lambda: None))   # a lambda: pickle refuses it
    assert not worker.closed and not worker.pending
    assert worker.send(WORKER, Cancel("r2"))
    assert [m.request_id for _, m in engine.receive()] == ["r2"]


def test_what_one_handler_sends_on_a_link_leaves_in_one_write(actors):
    worker, engine, worker_link, engine_link = actors
    writes: list[int] = []
    send = worker_link.sock.send
    worker_link.sock.send = lambda data: writes.append(len(data)) or send(data)
    for i in range(20):
        worker.send(ENGINE, Cancel(f"r{i}"))
    assert writes == []
    worker.flush_links()
    assert len(writes) == 1 and not worker_link.pending
    engine._read_links({engine_link.fileno()})
    assert [m.request_id for _, m in engine.handled] == [f"r{i}" for i in range(20)]


def test_a_write_the_socket_takes_part_of_resumes_mid_frame_and_every_frame_arrives_whole(links):
    worker, engine = links()
    send = worker.sock.send
    worker.sock.send = lambda data: send(bytes(data[:37]))   # a socket that takes a little at a time
    for i in range(5):
        assert worker.send(WORKER, Cancel(f"r{i}"), flush=False)
    while worker.pending:
        worker.flush()
    assert [m.request_id for _, m in engine.receive()] == [f"r{i}" for i in range(5)]


def test_a_message_written_now_is_in_the_kernel_behind_what_was_queued_before_it(actors):
    # FirstToken: once this is True the worker lets the first chunk go (runtime/delivery.py).
    worker, engine, worker_link, engine_link = actors
    worker.send(ENGINE, Cancel("queued first"))
    assert worker.send_written(ENGINE, FirstToken("r1", 1, 5.0)) and not worker_link.pending
    engine._read_links({engine_link.fileno()})      # no flush_links: both are written already
    assert [type(m).__name__ for _, m in engine.handled] == ["Cancel", "FirstToken"]
    assert worker.by_thespian == []


def test_a_message_the_socket_did_not_take_whole_is_not_written_now_and_is_sent_once(actors):
    worker, engine, worker_link, engine_link = actors
    send = worker_link.sock.send
    worker_link.sock.send = lambda data: send(bytes(data[:5]))   # part of the frame only
    assert not worker.send_written(ENGINE, FirstToken("r1", 1, 5.0))
    assert worker_link.pending and worker.by_thespian == []      # the rest leaves with the next flush
    worker_link.sock.send = send
    worker.flush_links()
    engine._read_links({engine_link.fileno()})
    assert [m.request_id for _, m in engine.handled] == ["r1"]
    assert not Actor(WORKER).send_written(ENGINE, FirstToken("r2", 1, 5.0))   # no link: by Thespian


def test_a_dead_peers_link_is_read_to_its_end_before_it_is_dropped(actors):
    # The engine reads a dead worker process's link to its end before it hears of the death
    # (runtime/engine_workers.py): what the process wrote there, it wrote before it died.
    worker, engine, worker_link, engine_link = actors
    for i in range(3):
        assert worker.send_written(ENGINE, FirstToken(f"r{i}", 1, 5.0))
    os.close(worker_link.sock.write_fd)              # the process is gone: its end closes
    worker_link.sock.write_fd = os.open(os.devnull, os.O_WRONLY)   # (for the fixture's own close)
    engine.send(WORKER, FirstTokenHeard("r0", 1))       # queued for it: it never reads it
    engine.read_to_end(WORKER)
    assert [m.request_id for _, m in engine.handled] == ["r0", "r1", "r2"] and not engine.linked(WORKER)
    assert engine.by_thespian == []                  # not sent again to a dead process by Thespian
    engine.read_to_end(WORKER)                       # nothing more, and no link to read
    assert len(engine.handled) == 3
