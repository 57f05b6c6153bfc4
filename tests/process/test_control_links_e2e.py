"""Control links on a real node: an engine and its worker processes send dispatches, first tokens
and results on one loopback socket each, not through Thespian's one-at-a-time transmits; the
engine's control listener refuses whatever is not one of its own worker processes, and keeps
serving."""

from __future__ import annotations

import socket
import struct

from conftest import closed_by_peer, deployment, wait_for
from protocol_samples import address

from actors.runtime.protocol import WorkerReady
from actors.security import wire

CALLS = 6


def _engine(client):
    (engine,) = client.status().engines
    return engine


def _frame(serializer, message) -> bytes:
    body = serializer.dumps((address("127.0.0.1", 1), message))
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
