"""The worker process's body poller and its stream channel writes, on real loopback sockets.

The poller (``actors/runtime/body_poller.py``) reads every streamed body of a worker process
on one thread; each test plays the upstream's side of real TCP (and TLS) connections and
checks what the slots' side sees: every payload once and in order, and each way a body can
end (its end, cut short, a read timeout, the deadline, a stop, an overflow, a sink that
raises). The unit tier's in-memory connections never reach the poller: they are not sockets.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from actors.core.chunked import ChunkedDecoder, ChunkedError
from actors.core.frames import FrameCodec, FrameDecoder
from actors.runtime.body_poller import ENDED, OVERFLOWED, STOPPED, BodyPoller
from actors.runtime.stream_sender import StreamSender
from actors.runtime.upstream_session import DeadlineReached
from actors.security.keys import KeyRing, WireKey

LONG_S = 30.0   # a read timeout or deadline no test reaches
KEYRING = KeyRing([WireKey("poller", "a-test-secret-of-enough-length-0123456789")], "body poller tests")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST = b"0\r\n\r\n"


@contextmanager
def connected(server_side: Callable[[socket.socket], socket.socket] = lambda s: s) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the slot's socket, non-blocking; the upstream's socket) over 127.0.0.1."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(listener.getsockname())
        upstream, _ = listener.accept()
    finally:
        listener.close()
    try:
        client.setblocking(False)
        yield client, server_side(upstream)
    finally:
        client.close()
        upstream.close()


@contextmanager
def connections(n: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    with ExitStack() as stack:
        yield [stack.enter_context(connected()) for _ in range(n)]


class Recorded:
    """A sink: each payload with the thread that handed it over."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.payloads: list[bytes] = []
        self.threads: set[str] = set()
        self.stop_after = stop_after

    def __call__(self, payload: bytes) -> bool:
        self.payloads.append(payload)
        self.threads.add(threading.current_thread().name)
        return self.stop_after is None or len(self.payloads) < self.stop_after

    @property
    def data(self) -> bytes:
        return b"".join(self.payloads)


@pytest.fixture
def poller() -> BodyPoller:
    return BodyPoller()


def pump_in_thread(poller: BodyPoller, sock: socket.socket, sink: Recorded, *, limit: int = 1 << 20,
                   read_s: float = LONG_S, deadline_s: float = LONG_S, buffered: bytes = b"",
                   cancelled: threading.Event | None = None) -> dict[str, object]:
    """Runs ``pump`` as a slot's thread would; the returned dict gets its outcome or error."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["outcome"] = poller.pump(sock, buffered, ChunkedDecoder(), sink, limit, read_s,
                                            time.time() + deadline_s, cancelled or threading.Event())
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            result["error"] = exc

    thread = threading.Thread(target=run, name="slot-test")
    thread.start()
    result["thread"] = thread
    return result


def finished(result: dict[str, object], timeout_s: float = 10.0) -> dict[str, object]:
    thread = result["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(timeout_s)
    assert not thread.is_alive(), "pump did not return"
    return result


def test_one_thread_reads_many_bodies_and_each_gets_its_own_payloads_once_in_order(poller):
    with connections(24) as pairs:
        sinks = [Recorded() for _ in pairs]
        results = [pump_in_thread(poller, client, sink) for (client, _), sink in zip(pairs, sinks)]
        for round_ in range(30):                   # interleaved, as many streams' tokens arrive
            for i, (_, upstream) in enumerate(pairs):
                upstream.sendall(chunk(b"b%d-t%d;" % (i, round_)))
        for _, upstream in pairs:
            upstream.sendall(LAST)
        for i, (result, sink) in enumerate(zip(results, sinks)):
            assert finished(result).get("outcome") == ENDED, result
            assert sink.data == b"".join(b"b%d-t%d;" % (i, r) for r in range(30))
            assert sink.threads == {"body-poller"}


def test_what_was_read_with_the_headers_comes_first(poller):
    with connected() as (client, upstream):
        sink = Recorded()
        result = pump_in_thread(poller, client, sink, buffered=chunk(b"first;") + b"7\r\nsec")
        upstream.sendall(b"ond;\r\n" + chunk(b"third") + LAST)
        assert finished(result).get("outcome") == ENDED
        assert sink.data == b"first;second;third"


def test_a_body_whole_in_what_was_read_with_the_headers_never_waits_for_the_socket(poller):
    with connected() as (client, _):
        sink = Recorded()
        outcome = poller.pump(client, chunk(b"all of it") + LAST, ChunkedDecoder(), sink, 1 << 20, LONG_S,
                              time.time() + LONG_S, threading.Event())
        assert (outcome, sink.data, sink.threads) == (ENDED, b"all of it", {threading.current_thread().name})


def test_a_body_cut_short_raises_on_the_slot_thread_after_what_came_before_it(poller):
    with connected() as (client, upstream):
        sink = Recorded()
        result = pump_in_thread(poller, client, sink)
        upstream.sendall(chunk(b"kept") + b"10\r\npart")
        upstream.shutdown(socket.SHUT_WR)           # the upstream went away inside a chunk
        assert isinstance(finished(result).get("error"), ChunkedError)
        assert sink.data.startswith(b"kept")


def test_no_byte_within_the_read_timeout_is_a_timeout(poller):
    with connected() as (client, upstream):
        sink = Recorded()
        result = pump_in_thread(poller, client, sink, read_s=0.2)
        upstream.sendall(chunk(b"one"))
        error = finished(result).get("error")
        assert isinstance(error, socket.timeout) and not isinstance(error, DeadlineReached)
        assert sink.data == b"one"


def test_the_exchange_deadline_ends_a_body_that_keeps_trickling(poller):
    with connected() as (client, upstream):
        sink = Recorded()
        result = pump_in_thread(poller, client, sink, read_s=LONG_S, deadline_s=0.3)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.is_set():
                try:
                    upstream.sendall(chunk(b"."))
                except OSError:
                    return
                stop.wait(0.02)

        threading.Thread(target=trickle, daemon=True).start()
        try:
            assert isinstance(finished(result).get("error"), DeadlineReached)
        finally:
            stop.set()


def test_a_stopped_exchange_ends_quietly_once_its_socket_is_shut(poller):
    with connected() as (client, upstream):
        sink, cancelled = Recorded(), threading.Event()
        result = pump_in_thread(poller, client, sink, cancelled=cancelled)
        upstream.sendall(chunk(b"before"))
        wait_for(lambda: sink.data == b"before")
        cancelled.set()                              # as HttpExchange.stop does, from the actor's thread
        client.shutdown(socket.SHUT_RDWR)
        assert finished(result).get("outcome") == STOPPED
        assert sink.data == b"before"


def test_a_sink_that_says_stop_gets_nothing_more(poller):
    with connected() as (client, upstream):
        sink = Recorded(stop_after=2)
        result = pump_in_thread(poller, client, sink)
        for i in range(5):
            upstream.sendall(chunk(b"%d" % i))
            if i < 2:                                # one read each, so the stop after the second is seen
                wait_for(lambda: len(sink.payloads) == i + 1)
        assert finished(result).get("outcome") == STOPPED
        assert len(sink.payloads) == 2


def test_a_body_over_its_limit_overflows_before_the_sink_sees_the_excess(poller):
    with connected() as (client, upstream):
        sink = Recorded()
        result = pump_in_thread(poller, client, sink, limit=10)
        upstream.sendall(chunk(b"12345"))
        wait_for(lambda: sink.data == b"12345")
        upstream.sendall(chunk(b"678901"))
        assert finished(result).get("outcome") == OVERFLOWED
        assert sink.data == b"12345"


def test_a_sink_that_raises_fails_its_own_body_and_the_poller_serves_on(poller):
    def broken(payload: bytes) -> bool:
        raise RuntimeError("a bug in the sink")

    with connected() as (client, upstream):
        result = pump_in_thread(poller, client, broken)  # type: ignore[arg-type]
        upstream.sendall(chunk(b"x"))
        assert isinstance(finished(result).get("error"), RuntimeError)
    assert_serves_on(poller)


def test_tls_records_are_read_whole_however_they_arrive(poller, tmp_path):
    server_tls, client_tls = tls_contexts(tmp_path)
    with connected() as (raw_client, raw_upstream):
        raw_client.setblocking(True)
        handshake: dict[str, ssl.SSLSocket] = {}
        accept = threading.Thread(target=lambda: handshake.update(
            upstream=server_tls.wrap_socket(raw_upstream, server_side=True)))
        accept.start()
        client = client_tls.wrap_socket(raw_client, server_hostname="localhost")
        accept.join(10)
        upstream = handshake["upstream"]
        client.setblocking(False)
        sink = Recorded()
        result = pump_in_thread(poller, client, sink)
        # One record per token, a burst of them at once, then a record cut in two writes.
        for i in range(50):
            upstream.sendall(chunk(b"t%d;" % i))
        upstream.sendall(chunk(b"x" * 20_000) + LAST)
        assert finished(result).get("outcome") == ENDED, result
        assert sink.data == b"".join(b"t%d;" % i for i in range(50)) + b"x" * 20_000
        client.close()
        upstream.close()


def test_a_socket_closed_under_the_poller_times_out_its_body_and_the_poller_serves_on(poller):
    with connected() as (client, upstream):
        sink = Recorded()
        result = pump_in_thread(poller, client, sink, read_s=0.3)
        upstream.sendall(chunk(b"one"))
        wait_for(lambda: sink.data == b"one")
        client.close()                               # not the slot's to do while it waits: a bug elsewhere
        assert isinstance(finished(result).get("error"), socket.timeout)
    assert_serves_on(poller)


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for localhost: the server's context, and a client's that trusts it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert_file)
    return server, client


def assert_serves_on(poller: BodyPoller) -> None:
    """The poller's thread still runs, and reads the next body handed to it."""
    assert poller.alive
    with connected() as (client, upstream):
        sink = Recorded()
        result = pump_in_thread(poller, client, sink)
        upstream.sendall(chunk(b"next") + LAST)
        assert finished(result).get("outcome") == ENDED and sink.data == b"next"


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# -- the stream channel's writes never wait for a consumer that stopped reading ---------------


def test_a_consumer_that_stops_reading_gets_messages_instead_and_no_write_waits_for_it():
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])   # and never read from it
            except socket.timeout:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    sender = StreamSender(FrameCodec(KEYRING))
    to = {"port": listener.getsockname()[1], "token": "tok"}
    outcomes: list[bool] = []
    writer = threading.Thread(target=lambda: outcomes.extend(
        sender.send(to, "r", seq, "x" * 4000, []) for seq in range(3000)))   # ~12 MB, past any socket's buffers
    try:
        writer.start()
        writer.join(60)
        assert not writer.is_alive(), "a write waited for the consumer"
        first_refused = outcomes.index(False)
        assert all(outcomes[:first_refused]) and first_refused > 10
        wait_for(lambda: len(accepted) >= 2)   # the chunk after a full connection connected again
        # What the consumer did get is whole frames, in order, up to where its connection filled.
        codec = FrameCodec(KEYRING)
        first = accepted[0]
        first.setblocking(False)
        data = bytearray()
        while True:
            try:
                part = first.recv(1 << 20)
            except BlockingIOError:
                break
            if not part:
                break
            data += part
        bodies = FrameDecoder(codec).feed(bytes(data))
        assert bodies[0] == {"hello": "tok"}
        assert [b["s"] for b in bodies[1:]] == list(range(len(bodies) - 1))
    finally:
        stop.set()
        acceptor.join(5)
        sender.close()
        for sock in accepted:
            sock.close()
        listener.close()


class _GatedSocket(socket.socket):
    """A real connection whose writes from the thread named ``actor`` wait for ``gate``: a writer
    the kernel took off the CPU in the middle of its write."""

    gate = threading.Event()

    def send(self, data, flags: int = 0) -> int:  # type: ignore[override]
        if threading.current_thread().name == "actor":
            assert self.gate.wait(LONG_S)
        return super().send(data, flags)


class _GatedTransport:
    def connect(self, host: str, port: int, timeout: float | None, **_: object) -> socket.socket:
        plain = socket.create_connection((host, port), timeout)
        return _GatedSocket(fileno=plain.detach())


def test_the_poller_writes_on_connections_of_its_own_and_never_waits_for_another_threads_write():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(LONG_S)
    to = {"port": listener.getsockname()[1], "token": "tok"}
    sender = StreamSender(FrameCodec(KEYRING), _GatedTransport())
    _GatedSocket.gate = threading.Event()
    done: dict[str, bool] = {}

    def send_as(name: str, rids: list[str], own: bool = False) -> threading.Thread:
        def run() -> None:
            if own:
                sender.own_connections()
            for seq, rid in enumerate(rids):
                done[rid] = sender.send(to, rid, seq, "x", [])
        thread = threading.Thread(target=run, name=name)
        thread.start()
        return thread

    accepted: list[socket.socket] = []
    try:
        _GatedSocket.gate.set()
        send_as("slot", ["a0"]).join(LONG_S)           # the shared connection, made and greeted
        accepted.append(listener.accept()[0])
        _GatedSocket.gate.clear()
        actor = send_as("actor", ["a1"])               # its write is held mid-way ...
        wait_for(lambda: sender.links[(to["port"], "tok", 0)].writing)
        behind = send_as("slot", ["a2"])               # ... and another thread of the shared lane waits for it,
        wait_for(lambda: (link := sender.links[(to["port"], "tok", 0)]).queued is not None
                 and len(link.queued.frames) == 1)
        poller = send_as("body-poller", [f"p{i}" for i in range(5)], own=True)
        poller.join(10)                                # ... but the poller's own connection does not
        accepted.append(listener.accept()[0])
        assert not poller.is_alive() and all(done[f"p{i}"] for i in range(5))
        assert actor.is_alive() and behind.is_alive() and "a1" not in done and "a2" not in done
        _GatedSocket.gate.set()
        actor.join(LONG_S)
        behind.join(LONG_S)
        assert done == {"a0": True, "a1": True, "a2": True, **{f"p{i}": True for i in range(5)}}
        codec = FrameCodec(KEYRING)

        def bodies(sock: socket.socket, count: int) -> list[dict[str, object]]:
            decoder, got = FrameDecoder(codec), []
            sock.settimeout(LONG_S)
            while len(got) < count:
                got += decoder.feed(sock.recv(1 << 16))
            return got

        assert [b.get("r") for b in bodies(accepted[0], 4)] == [None, "a0", "a1", "a2"]   # hello, then in order
        assert [b.get("r") for b in bodies(accepted[1], 6)] == [None] + [f"p{i}" for i in range(5)]
    finally:
        _GatedSocket.gate.set()
        sender.close()
        for sock in accepted:
            sock.close()
        listener.close()
