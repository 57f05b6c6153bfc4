"""The process's end of the stream channel: greeting, signatures, routing, deadlines, the connection cap.

The receiver runs its real thread and selector over an in-memory listener whose connections
are pipes (``actors/testing/pipe_listener.py``); the frames are the ones a worker writes
(``FrameCodec``, as ``runtime/stream_sender.py`` signs them). No socket opens.
"""

from __future__ import annotations

import fcntl
import select
import time
from collections.abc import Callable
from typing import Any

import pytest

from actors.core.frames import FrameCodec, chunk_body
from actors.security.keys import KeyRing, WireKey
from actors.stream_receiver import Inbox, StreamReceiver, shared_receiver
from actors.testing.pipe_listener import PipeClient, PipeListener
from actors.types import TokenChunk
from harness import TEST_KEYRING

CODEC = FrameCodec(TEST_KEYRING)
STRANGER = FrameCodec(KeyRing([WireKey("other", "another-secret-of-enough-length-0123456789abcdef")], "other"))


def readable(obj, timeout_s: float) -> bool:
    """poll, not select: a long test run may hold more than FD_SETSIZE (1024) descriptors."""
    poller = select.poll()
    poller.register(obj, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def until(condition: Callable[[], Any], what: str, timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(0.002)
    return value


@pytest.fixture
def receiver():
    """Factory: receiver(**kw) -> (a running StreamReceiver on a PipeListener, that listener)."""
    made: list[StreamReceiver] = []

    def make(**kw: Any) -> tuple[StreamReceiver, PipeListener]:
        listener = PipeListener()
        made.append(StreamReceiver(TEST_KEYRING, listener=listener, **kw))
        return made[-1], listener

    yield make
    for r in made:
        r.close()


def greeted(rx: StreamReceiver, listener: PipeListener) -> PipeClient:
    worker = listener.connect()
    worker.sendall(CODEC.encode({"hello": rx.token}))
    return worker


def chunk(request_id: str, seq: int, text: str = "", tools: list[dict[str, Any]] | None = None,
          codec: FrameCodec = CODEC) -> bytes:
    return codec.encode(chunk_body(request_id, seq, text, tools or []))


def drained(inbox: Inbox, count: int) -> list[TokenChunk]:
    got: list[TokenChunk] = []
    until(lambda: got.extend(inbox.drain()) or len(got) >= count, f"{count} chunks")
    return got


def test_chunks_reach_the_inbox_of_their_request_in_the_order_written_and_wake_it(receiver):
    rx, listener = receiver()
    assert rx.spec == {"port": listener.port, "token": rx.token} and len(rx.token) == 32
    mine, other = Inbox(), Inbox()
    rx.route("r1", mine)
    rx.route("r2", other)
    worker = greeted(rx, listener)
    worker.sendall(chunk("r1", 0, "He") + chunk("r2", 0, "x") + chunk("r1", 1, "llo",
                                                                       [{"index": 0, "name": "f"}]))
    assert readable(mine, 5)                                     # its pipe woke whoever waits on it
    assert drained(mine, 2) == [TokenChunk("r1", 0, "He"), TokenChunk("r1", 1, "llo", [{"index": 0, "name": "f"}])]
    assert drained(other, 1) == [TokenChunk("r2", 0, "x")]
    assert not readable(mine, 0)                                 # drained: no longer readable
    assert (rx.delivered, rx.refused, rx.connections) == (3, 0, 1)
    mine.close()
    other.close()


def test_frames_split_anywhere_arrive_whole(receiver):
    rx, listener = receiver()
    inbox = Inbox()
    rx.route("r1", inbox)
    data = CODEC.encode({"hello": rx.token}) + b"".join(chunk("r1", i, f"w{i} ") for i in range(5))
    worker = listener.connect()
    for i in range(len(data)):
        worker.sendall(data[i:i + 1])
    assert [c.text for c in drained(inbox, 5)] == [f"w{i} " for i in range(5)]
    inbox.close()


def test_chunks_of_requests_nobody_waits_for_and_bodies_that_are_no_chunk_are_dropped(receiver):
    rx, listener = receiver()
    inbox = Inbox()
    rx.route("r1", inbox)
    worker = greeted(rx, listener)
    worker.sendall(chunk("gone", 0, "a") + CODEC.encode({"r": "r1", "s": -1, "t": "bad seq"}) + chunk("r1", 0, "b"))
    assert drained(inbox, 1) == [TokenChunk("r1", 0, "b")]
    rx.unroute("r1")
    worker.sendall(chunk("r1", 1, "late"))
    marker = Inbox()
    rx.route("m", marker)
    worker.sendall(chunk("m", 0))                                 # written after "late": read after it
    drained(marker, 1)
    assert inbox.drain() == [] and rx.delivered == 2 and rx.refused == 0
    inbox.close()
    marker.close()


@pytest.mark.parametrize("first", [
    pytest.param(lambda rx: CODEC.encode({"hello": "not-the-token"}), id="wrong token"),
    pytest.param(lambda rx: CODEC.encode({"r": "r1", "s": 0, "t": "no greeting"}), id="no greeting"),
    pytest.param(lambda rx: STRANGER.encode({"hello": rx.token}), id="a key this process does not accept"),
    pytest.param(lambda rx: b"\x00\x00\x00\x30" + b"x" * 48, id="a bad signature"),
    pytest.param(lambda rx: b"\x7f\xff\xff\xff", id="a greeting too long"),
])
def test_a_connection_that_does_not_greet_with_the_token_and_the_ring_is_dropped_unread(receiver, first):
    rx, listener = receiver()
    inbox = Inbox()
    rx.route("r1", inbox)
    worker = listener.connect()
    worker.sendall(first(rx) + chunk("r1", 0, "smuggled"))
    until(lambda: worker.peer.closed, "the connection dropped")
    assert (rx.refused, rx.connections, rx.delivered) == (1, 0, 0) and inbox.drain() == []
    good = greeted(rx, listener)                                  # the listener serves on
    good.sendall(chunk("r1", 0, "ok"))
    assert drained(inbox, 1) == [TokenChunk("r1", 0, "ok")]
    inbox.close()


def test_a_bad_frame_after_the_greeting_drops_the_connection_and_keeps_what_came_before(receiver):
    rx, listener = receiver()
    inbox = Inbox()
    rx.route("r1", inbox)
    worker = greeted(rx, listener)
    worker.sendall(chunk("r1", 0, "kept"))
    assert drained(inbox, 1) == [TokenChunk("r1", 0, "kept")]
    worker.sendall(chunk("r1", 1, "forged", codec=STRANGER) + chunk("r1", 2, "after"))
    until(lambda: worker.peer.closed, "the connection dropped")
    assert inbox.drain() == [] and (rx.refused, rx.delivered, rx.connections) == (1, 1, 0)
    inbox.close()


def test_a_connection_silent_past_the_greeting_deadline_is_closed_and_a_greeted_one_is_not(receiver):
    rx, listener = receiver(hello_timeout_s=0.05)
    worker = greeted(rx, listener)
    silent = listener.connect()
    silent.sendall(CODEC.encode({"hello": rx.token})[:3])         # starts a greeting, then nothing
    until(lambda: silent.peer.closed, "the silent connection closed")
    time.sleep(0.1)                                               # twice its deadline: the greeted one stays
    assert (rx.timed_out, rx.connections, rx.refused) == (1, 1, 0) and not worker.peer.closed
    inbox = Inbox()
    rx.route("r1", inbox)
    worker.sendall(chunk("r1", 0, "still here"))
    assert drained(inbox, 1) == [TokenChunk("r1", 0, "still here")]
    inbox.close()


def test_past_the_connection_cap_new_connections_wait_unaccepted_and_are_served_once_one_closes(receiver):
    rx, listener = receiver(max_connections=2)
    inbox = Inbox()
    rx.route("r1", inbox)
    first, second = greeted(rx, listener), greeted(rx, listener)
    third = greeted(rx, listener)
    third.sendall(chunk("r1", 0, "waited"))
    until(lambda: rx.paused, "the listener paused")
    assert (rx.connections, listener.waiting) == (2, 1)
    time.sleep(0.05)
    assert inbox.drain() == [] and not third.peer.closed         # waiting in the backlog, not accepted and dropped
    first.close()                                                 # the worker went away
    assert drained(inbox, 1) == [TokenChunk("r1", 0, "waited")]   # accepted, read, nothing lost
    assert (rx.connections, rx.paused, listener.waiting, listener.accepted) == (2, True, 0, 3)   # at the cap again
    second.close()
    until(lambda: not rx.paused, "accepting again")
    assert rx.connections == 1
    fourth = greeted(rx, listener)
    fourth.sendall(chunk("r1", 1, "at once"))
    assert drained(inbox, 1) == [TokenChunk("r1", 1, "at once")]
    inbox.close()


def test_close_stops_the_thread_and_closes_every_connection_and_the_listener(receiver):
    rx, listener = receiver()
    worker = greeted(rx, listener)
    until(lambda: rx.connections == 1, "the connection accepted")
    rx.close()
    assert not rx._thread.is_alive() and worker.peer.closed and listener.closed
    rx.close()                                                    # twice: nothing more happens
    with pytest.raises(ConnectionRefusedError):
        listener.connect()


def test_take_hands_over_what_came_without_reading_the_pipe_and_drain_reads_every_wakeup_at_once():
    """A thread back for its next chunk takes what came with no system call; its wake-ups stay
    in the pipe, so its next wait returns at once and one read takes them all."""
    inbox = Inbox()
    inbox.put(TokenChunk("r", 0, "a"))
    assert [c.seq for c in inbox.take()] == [0] and inbox.take() == []
    assert readable(inbox, 0)                                     # the wake-up for chunk 0 is still there
    for seq in (1, 2):
        inbox.put(TokenChunk("r", seq, "b"))
    assert [c.seq for c in inbox.drain()] == [1, 2]
    assert not readable(inbox, 0)                                 # all three wake-ups read
    inbox.close()


def test_an_inbox_holds_more_chunks_than_its_pipe_has_wakeups_and_a_put_after_close_is_harmless():
    inbox = Inbox()
    fcntl.fcntl(inbox.fileno(), fcntl.F_SETPIPE_SZ, 4096)        # its pipe at the smallest size Linux allows
    for seq in range(5000):                                       # more wake-ups than the pipe holds
        inbox.put(TokenChunk("r", seq, "b"))
    assert readable(inbox, 0)
    assert [c.seq for c in inbox.drain()] == list(range(5000)) and inbox.drain() == []
    inbox.close()
    inbox.put(TokenChunk("r", 2, "c"))                            # the receiver raced the close: no error
    inbox.close()
    assert inbox.closed


def test_no_keyring_no_receiver():
    assert shared_receiver(None) is None
