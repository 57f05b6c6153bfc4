"""The stream channel: chunks on a signed loopback socket, with Thespian messages as the fallback."""

from __future__ import annotations

import socket
import struct
import time

from actors.core.frames import FrameCodec, chunk_body
from actors.security import wire
from actors.stream_receiver import Inbox, StreamReceiver, shared_receiver
from actors.types import Completed, Failed, TokenChunk

from conftest import closed_by_peer, deployment, free_port, wait_for

WORDS = 12


def _prompt(tag: str) -> list[dict]:
    return [{"role": "user", "content": f"[[mock drip_ms=5 words={WORDS}]] {tag}"}]


def test_streamed_chunks_travel_on_the_channel_once_each(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=2, coalesce_ms=0)])
    receiver = shared_receiver(wire.current().keyring)
    before = receiver.delivered
    counts = []
    for i in range(3):
        with client.stream("d1", _prompt(f"t{i}"), timeout_s=30) as stream:
            chunks = list(stream)
        assert [c.seq for c in chunks] == list(range(stream.result.chunks))
        assert "".join(c.text for c in chunks) == stream.result.text
        assert len(stream.result.text.split()) == WORDS
        counts.append(stream.result.chunks)
    # Every chunk of every stream came on the channel, and only once: none as a message.
    assert receiver.delivered - before == sum(counts) >= 3
    assert receiver.refused == 0


def test_a_request_whose_channel_cannot_be_reached_gets_its_chunks_as_messages(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=1, coalesce_ms=0)])
    engine = client.routes("d1")[0].engine
    request = client.request("d1", _prompt("fallback"), stream=True, timeout_s=30)
    request.channel = {"port": free_port(), "token": "nobody-listens"}   # closed: connection refused
    endpoint = client._endpoint()
    endpoint.tell(engine, request)
    seen = []
    deadline = time.monotonic() + 30

    def all_in() -> bool:   # the terminal (from the engine) may overtake the last chunks (from the worker)
        ends = [m for m in seen if isinstance(m, (Completed, Failed))]
        return bool(ends) and sum(isinstance(m, TokenChunk) for m in seen) >= (ends[0].chunks or 0)

    while time.monotonic() < deadline and not all_in():
        message = endpoint.listen(5)
        if message is not None:
            seen.append(message)
    chunks = [m for m in seen if isinstance(m, TokenChunk)]
    (terminal,) = [m for m in seen if isinstance(m, (Completed, Failed))]
    assert isinstance(terminal, Completed), seen
    assert [c.seq for c in chunks] == list(range(terminal.chunks)) and terminal.chunks >= 1
    assert "".join(c.text for c in chunks) == terminal.text and len(terminal.text.split()) == WORDS


def _ring(secret: str) -> wire.KeyRing:
    return wire.KeyRing(wire.parse_keys(f"k{secret[0]}:{secret * 40}", "test"), "test")


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_the_receiver_drops_connections_with_a_wrong_key_token_or_frame_and_files_only_open_requests():
    receiver = StreamReceiver(_ring("a"))
    inbox = Inbox()
    try:
        receiver.route("req_open", inbox)
        mine, other = FrameCodec(_ring("a")), FrameCodec(_ring("b"))
        attempts = [
            other.encode({"hello": receiver.token}) + other.encode(chunk_body("req_open", 0, "forged", [])),
            mine.encode({"hello": "a guess"}) + mine.encode(chunk_body("req_open", 0, "forged", [])),
            mine.encode(chunk_body("req_open", 0, "no hello first", [])),
            struct.pack(">I", 1 << 30),                          # a length no frame may have
        ]
        for data in attempts:
            sock = _connect(receiver.port)
            sock.sendall(data)
            assert closed_by_peer(sock)
            sock.close()
        assert receiver.refused == len(attempts)
        assert inbox.drain() == []

        sock = _connect(receiver.port)
        sock.sendall(mine.encode({"hello": receiver.token}) + mine.encode(chunk_body("req_gone", 0, "late", []))
                     + mine.encode(chunk_body("req_open", 0, "hi", [])) + mine.encode({"r": 5}))
        wait_for(lambda: receiver.delivered == 1, timeout_s=5, message="the chunk of the open request")
        assert inbox.drain() == [TokenChunk("req_open", 0, "hi", [])]
        sock.close()
    finally:
        receiver.close()
        inbox.close()


def test_past_its_connection_limit_the_receiver_makes_workers_wait_and_loses_nothing():
    receiver = StreamReceiver(_ring("a"), max_connections=1)
    inbox = Inbox()
    codec = FrameCodec(_ring("a"))
    try:
        receiver.route("req_1", inbox)
        first = _connect(receiver.port)
        first.sendall(codec.encode({"hello": receiver.token}) + codec.encode(chunk_body("req_1", 0, "a", [])))
        wait_for(lambda: receiver.delivered == 1, timeout_s=5, message="the first connection's chunk")
        second = _connect(receiver.port)      # completes in the backlog; its frames wait there
        second.sendall(codec.encode({"hello": receiver.token}) + codec.encode(chunk_body("req_1", 1, "b", [])))
        wait_for(lambda: receiver.paused, timeout_s=5, message="the listener to pause")
        assert receiver.delivered == 1
        first.close()
        wait_for(lambda: receiver.delivered == 2, timeout_s=5, message="the waiting connection's chunk")
        assert [c.text for c in inbox.drain()] == ["a", "b"]
        second.close()
    finally:
        receiver.close()
        inbox.close()


def test_a_connection_that_announces_a_greeting_and_falls_silent_is_closed_while_workers_stream():
    """Issue 21: a greeting announcing 400 bytes, then silence, held its connection open forever."""
    receiver = StreamReceiver(_ring("a"), hello_timeout_s=0.5)
    inbox = Inbox()
    codec = FrameCodec(_ring("a"))
    try:
        receiver.route("req_1", inbox)
        silent = _connect(receiver.port)
        silent.sendall(struct.pack(">I", 400) + b"\x02k")     # a greeting's length and two of its bytes
        idle = _connect(receiver.port)                         # connects and never says anything
        worker = _connect(receiver.port)
        worker.sendall(codec.encode({"hello": receiver.token}) + codec.encode(chunk_body("req_1", 0, "a", [])))
        wait_for(lambda: receiver.delivered == 1, timeout_s=5, message="the greeted connection's chunk")
        assert closed_by_peer(silent) and closed_by_peer(idle)
        assert receiver.timed_out == 2 and receiver.refused == 0
        # The greeted connection stays: a worker's chunks keep arriving on it after the deadline.
        worker.sendall(codec.encode(chunk_body("req_1", 1, "b", [])))
        wait_for(lambda: receiver.delivered == 2, timeout_s=5, message="a chunk after the greeting deadline")
        assert [c.text for c in inbox.drain()] == ["a", "b"] and receiver.connections == 1
        for sock in (silent, idle, worker):
            sock.close()
    finally:
        receiver.close()
        inbox.close()
