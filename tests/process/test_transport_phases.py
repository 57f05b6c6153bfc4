"""Transport failures by phase, against a real socket server on 127.0.0.1 that misbehaves in
exactly that phase: the attempt records where it was, and the core maps it to an error and
to whether the provider has the request (``sent``)."""

from __future__ import annotations

import queue
import socket
import threading
import time

import pytest
import requests

from actors import errors as E
from actors.core.streaming import END, HttpStatus, Opened, TransportFailed, WholeBody
from actors.core.transport import Phase, classify_transport
from actors.providers.base import HttpRequest
from actors.runtime.transport import TcpTransport
from actors.runtime.upstream import HttpExchange
from actors.runtime.upstream_session import PhaseAdapter

BIG = 8 * 1024 * 1024  # more than the socket buffers hold, so a write can fail or block


class Misbehaving:
    """A one-connection-at-a-time HTTP server whose ``behaviour(conn)`` does the misbehaving."""

    def __init__(self, behaviour, backlog: int = 8) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.behaviour = behaviour
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            try:
                self.behaviour(self, conn)
            except OSError:
                pass

    def read_request(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        while len(body) < length:
            piece = conn.recv(1 << 20)
            if not piece:
                break
            body += piece
        self.received += 1
        return body

    def stall(self) -> None:
        self.stopped.wait(30)

    def close(self) -> None:
        self.stopped.set()
        for conn in self.conns:
            conn.close()
        self.sock.close()
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


def attempt(url: str, body: bytes = b'{"model": "m"}', timeouts=(2.0, 0.5), deadline_s: float = 30.0,
            whole: bool = False):
    session = requests.Session()
    adapter = PhaseAdapter(TcpTransport(), pool_connections=1, pool_maxsize=2, max_retries=0)
    session.mount("http://", adapter)
    session.trust_env = False
    run = HttpExchange(HttpRequest("POST", url, {"content-type": "application/json"}, body, not whole), timeouts,
                       1 << 30, time.time() + deadline_s, whole=whole)
    arrived: queue.Queue = queue.Queue()
    reader = threading.Thread(target=run.run, args=(session, lambda event: arrived.put(event) or True), daemon=True)
    reader.start()
    events = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        item = arrived.get(timeout=20)
        events.append(item)
        if item is END or isinstance(item, (HttpStatus, TransportFailed, WholeBody)):
            break
    run.stop()
    reader.join(5)
    session.close()
    return events


def failure(events) -> TransportFailed:
    assert isinstance(events[-1], TransportFailed), events
    return events[-1]


@pytest.fixture
def server(request):
    servers = []

    def make(behaviour, **kw):
        s = Misbehaving(behaviour, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_connect_refused_is_not_sent():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    f = failure(attempt(f"http://127.0.0.1:{port}/v1"))
    assert f.phase is Phase.CONNECT and not f.timed_out
    verdict = classify_transport(f.phase, timed_out=f.timed_out)
    assert isinstance(verdict.error, E.NetworkError) and not verdict.sent and verdict.error.retryable


def test_a_connect_that_times_out_is_not_sent():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: one queued connection fills the backlog, later SYNs are dropped
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        f = failure(attempt(f"http://127.0.0.1:{port}/v1", timeouts=(0.3, 5.0)))
    finally:
        filler.close()
        listener.close()
    assert f.phase is Phase.CONNECT and f.timed_out, f
    verdict = classify_transport(f.phase, timed_out=True)
    assert isinstance(verdict.error, E.Timeout) and not verdict.sent


def test_accept_and_close_before_reading_fails_the_send_and_is_not_sent(server):
    srv = server(lambda s, conn: conn.close())
    f = failure(attempt(srv.url, body=b"x" * BIG))
    assert f.phase is Phase.SEND and not f.timed_out, f
    verdict = classify_transport(f.phase, timed_out=False)
    assert isinstance(verdict.error, E.NetworkError) and not verdict.sent


def test_a_peer_that_never_reads_times_the_send_out_and_it_is_not_sent(server):
    srv = server(lambda s, conn: s.stall())
    f = failure(attempt(srv.url, body=b"x" * BIG, timeouts=(0.5, 5.0)))
    assert f.phase is Phase.SEND and f.timed_out, f
    verdict = classify_transport(f.phase, timed_out=True)
    assert isinstance(verdict.error, E.Timeout) and not verdict.sent


def test_read_the_body_then_close_is_sent(server):
    def behaviour(s, conn):
        s.read_request(conn)
        conn.close()
    srv = server(behaviour)
    f = failure(attempt(srv.url))
    assert srv.received == 1
    assert f.phase is Phase.AWAIT_HEADERS and not f.timed_out, f
    verdict = classify_transport(f.phase, timed_out=False)
    assert isinstance(verdict.error, E.NetworkError) and verdict.sent


def test_read_the_body_then_stall_is_a_sent_timeout(server):
    def behaviour(s, conn):
        s.read_request(conn)
        s.stall()
    srv = server(behaviour)
    f = failure(attempt(srv.url))
    assert f.phase is Phase.AWAIT_HEADERS and f.timed_out, f
    verdict = classify_transport(f.phase, timed_out=True)
    assert isinstance(verdict.error, E.Timeout) and verdict.sent


def _headers(chunked: bool = True) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            + (b"transfer-encoding: chunked\r\n" if chunked else b"") + b"\r\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_headers_then_stall_is_a_body_timeout(server):
    def behaviour(s, conn):
        s.read_request(conn)
        conn.sendall(_headers())
        s.stall()
    srv = server(behaviour)
    events = attempt(srv.url)
    f = failure(events)
    assert isinstance(events[0], Opened) and f.phase is Phase.BODY and f.timed_out, events
    verdict = classify_transport(f.phase, timed_out=True, delivered=False)
    assert isinstance(verdict.error, E.Timeout) and verdict.sent and verdict.error.retryable


def test_a_chunk_then_stall_is_a_timeout_not_a_stream_error(server):
    """Issue 10 item 4: a stall after the first token is Timeout (requests calls it ConnectionError)."""
    def behaviour(s, conn):
        s.read_request(conn)
        conn.sendall(_headers() + _chunk(b'data: {"choices": []}\n\n'))
        s.stall()
    srv = server(behaviour)
    events = attempt(srv.url)
    f = failure(events)
    assert b"".join(e for e in events if isinstance(e, bytes)) == b'data: {"choices": []}\n\n'
    assert f.phase is Phase.BODY and f.timed_out, events
    verdict = classify_transport(f.phase, timed_out=True, delivered=True)
    assert type(verdict.error) is E.Timeout and verdict.sent and verdict.error.retryable is False


def test_a_chunk_then_close_is_a_stream_error(server):
    def behaviour(s, conn):
        s.read_request(conn)
        conn.sendall(_headers() + _chunk(b"data: {}\n\n"))
        conn.close()
    srv = server(behaviour)
    f = failure(attempt(srv.url))
    assert f.phase is Phase.BODY and not f.timed_out, f
    verdict = classify_transport(f.phase, timed_out=False)
    assert isinstance(verdict.error, E.StreamError) and verdict.sent


def test_a_truncated_content_length_body_is_a_stream_error(server):
    def behaviour(s, conn):
        s.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":")
        conn.close()
    srv = server(behaviour)
    f = failure(attempt(srv.url))
    assert f.phase is Phase.BODY and not f.timed_out, f


def test_a_trickle_keeps_every_read_alive_and_arrives_byte_by_byte(server):
    """Each read returns what has arrived (read1), so the worker's deadline can act between them."""
    def behaviour(s, conn):
        s.read_request(conn)
        conn.sendall(_headers(chunked=False))
        for _ in range(6):
            conn.sendall(b"x")
            if s.stopped.wait(0.15):
                return
        conn.close()
    srv = server(behaviour)
    events = attempt(srv.url, timeouts=(2.0, 1.0))
    pieces = [e for e in events if isinstance(e, bytes)]
    assert events[-1] is END and b"".join(pieces) == b"x" * 6 and len(pieces) >= 3, events


def test_a_trickle_that_satisfies_every_read_still_ends_at_the_deadline(server):
    """Issue 17 item 2: a byte per 100 ms against read_s=2 never trips a read timeout."""
    def behaviour(s, conn):
        s.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(1000):
            conn.sendall(b" ")
            if s.stopped.wait(0.1):
                return
    srv = server(behaviour)
    started = time.monotonic()
    f = failure(attempt(srv.url, timeouts=(2.0, 2.0), deadline_s=0.8, whole=True))
    elapsed = time.monotonic() - started
    assert f.phase is Phase.BODY and f.timed_out, f
    assert elapsed < 2.0, "ended at the deadline, before even one read timeout could"
