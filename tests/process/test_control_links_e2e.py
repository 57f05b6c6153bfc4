"""Control links on a real node: an engine and its worker processes send dispatches, first tokens
and results on one loopback socket each, not through Thespian's one-at-a-time transmits, and a
caller on the same host sends its calls and gets their terminals on one of its own; the engine's
control listener refuses whatever is neither, and keeps serving."""

from __future__ import annotations

import socket
import struct

from conftest import closed_by_peer, deployment, wait_for
from protocol_samples import address

from actors.runtime.protocol import LinkHello, WorkerReady
from actors.security import wire
from actors.types import Completed, InferenceRequest, Usage

CALLS = 6


def _engine(client):
    (engine,) = client.status().engines
    return engine


def _frame(serializer, message, sender=None) -> bytes:
    body = serializer.dumps((sender or address("127.0.0.1", 1), message))
    return struct.pack(">I", len(body)) + body


def test_an_engine_and_its_worker_processes_talk_on_their_control_links(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=4, worker_processes=2, coalesce_ms=0)])
    wait_for(lambda: _engine(client).control.get("links") == 2, message="both worker processes linked")
    for i in range(CALLS):
        with client.stream("d1", [{"role": "user", "content": f"[[mock words=5]] call {i}"}], max_tokens=5) as stream:
            assert len(stream.text().split()) == 5
    control = _engine(client).control
    assert control["links"] == 2 and control["refused"] == 0
    # Each call: a dispatch and a first-token answer out; a first token and a result in (and each
    # process's WorkerReady). Through Thespian these would be 0.
    assert control["sent"] >= 2 * CALLS and control["received"] >= 2 * CALLS + 2


def test_the_control_listener_refuses_what_is_not_one_of_its_worker_processes(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=2, worker_processes=2)])
    wait_for(lambda: _engine(client).control.get("links") == 2, message="both worker processes linked")
    port = _engine(client).control["port"]
    node_signed = wire.current()     # this test launched the node: its frames carry the node's tag
    assert node_signed is not None
    untagged = wire.WireSerializer(node_signed.keyring, node_key=lambda: None)   # a local client's
    attempts = {
        "bytes that are no frame": b"\x00\x00\x00\x05hello",
        "a frame without the node's tag": _frame(untagged, WorkerReady([0], 1)),
        "a tagged frame from an address that is none of its processes": _frame(node_signed, WorkerReady([0], 1)),
        "a local caller's frame that is neither a call nor a cancel": _frame(untagged, Completed(
            "r1", "forged", "stop", Usage(1, 1), chunks=0, deployment="d1")),
    }
    for what, data in attempts.items():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(data)
            assert closed_by_peer(sock, timeout_s=15), what
    control = _engine(client).control
    assert control["refused"] == len(attempts) and control["links"] == 2
    with client.stream("d1", [{"role": "user", "content": "[[mock words=3]] still serving"}], max_tokens=3) as stream:
        assert len(stream.text().split()) == 3
    assert _engine(client).control["received"] >= 2 + 2   # that call went on a link too


def test_a_callers_calls_and_their_terminals_go_on_its_link_to_the_engine(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=2, worker_processes=1)])
    wait_for(lambda: _engine(client).control.get("links") == 1, message="the worker process linked")
    (entry,) = client.routes("d1", refresh=True)
    assert entry.control_port == _engine(client).control["port"]
    for i in range(CALLS):
        assert client.complete("d1", [{"role": "user", "content": f"[[mock words=2]] call {i}"}],
                               max_tokens=2).text
        with client.stream("d1", [{"role": "user", "content": f"[[mock words=3]] s{i}"}], max_tokens=3) as stream:
            assert len(stream.text().split()) == 3
    control = _engine(client).control
    # One link for every call and thread of this process; nothing refused.
    assert control["callers"] == 1 and control["caller_refused"] == 0 and control["refused"] == 0
    assert client.link.caller_links().linked(entry.engine)


def test_the_engines_greeting_names_it_and_a_callers_first_call_is_answered_on_the_link(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=1)])
    (entry,) = client.routes("d1", refresh=True)
    signer = wire.current()
    with socket.create_connection(("127.0.0.1", entry.control_port), timeout=5) as sock:
        sock.settimeout(10)
        hello = _read_frame(sock, signer)
        assert isinstance(hello[1], LinkHello) and hello[0] == entry.engine == hello[1].engine
        request = InferenceRequest(model="d1", messages=[{"role": "user", "content": "[[mock words=2]] hi"}],
                                   params={"max_tokens": 2}, request_id="req_on_link")
        sock.sendall(_frame(signer, request))
        sender, terminal = _read_frame(sock, signer)
        assert sender == entry.engine and isinstance(terminal, Completed)
        assert terminal.request_id == "req_on_link" and len(terminal.text.split()) == 2


def _read_frame(sock, serializer):
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = sock.recv(n - len(data))
            assert more, "the engine closed the link"
            data += more
        return data
    (length,) = struct.unpack(">I", exactly(4))
    envelope = serializer.loads(exactly(length), ("127.0.0.1", 0))
    assert isinstance(envelope, tuple), "a frame the wire refused"
    return envelope
