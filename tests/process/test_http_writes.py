"""What the front door's server sends, on a real socket: a response's head goes with its first body bytes.

Every send of the HTTP process is a system call, and under load a hand-over of its GIL
(docs/performance.md, round 12); waitress on its own sends the head, then each body write.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from waitress import wasyncore

from actors.http.server import GuardedChannel, GuardedServer
from actors.settings.schema import HttpConfig


@pytest.fixture
def served() -> Iterator[Any]:
    """Factory: served(app) -> (port, the bytes of each send the server made); stopped at teardown."""
    servers: list[tuple[GuardedServer, threading.Thread]] = []

    def serve(app: Any) -> tuple[int, list[bytes]]:
        sends: list[bytes] = []

        class Recording(GuardedChannel):
            def send(self, data: Any, do_close: bool = True) -> int:
                sent = super().send(data, do_close)
                sends.append(bytes(data[:sent]))
                return sent

        class Server(GuardedServer):
            channel_class = Recording

        server = Server(app, HttpConfig(auth="none", threads=2), host="127.0.0.1", port=0)
        thread = threading.Thread(target=server.run, name="waitress", daemon=True)
        thread.start()
        servers.append((server, thread))
        return server.effective_port, sends  # type: ignore[attr-defined]

    yield serve
    for server, thread in servers:
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))  # type: ignore[attr-defined]
        thread.join(5)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        assert not thread.is_alive()


def _get(port: int, until: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: door\r\nConnection: close\r\n\r\n")
        got = b""
        while until not in got:
            data = conn.recv(65536)
            if not data:
                break
            got += data
        return got


def test_a_whole_answer_leaves_in_one_send_head_and_body(served) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")])
        return [b'{"ok":true}']

    port, sends = served(app)
    assert _get(port, b'{"ok":true}').endswith(b'{"ok":true}')
    assert sends[0].startswith(b"HTTP/1.1 200 OK\r\n") and sends[0].endswith(b'\r\n\r\n{"ok":true}'), sends


def test_a_streams_head_goes_with_its_first_event_and_each_later_event_on_its_own(served) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        yield b"data: one\n\n"
        yield b"data: two\n\n"

    port, sends = served(app)
    assert _get(port, b"0\r\n\r\n").endswith(b"0\r\n\r\n")
    assert sends[0].startswith(b"HTTP/1.1 200 OK\r\n") and sends[0].endswith(b"\r\n\r\nB\r\ndata: one\n\n\r\n"), sends
    assert sends[1] == b"B\r\ndata: two\n\n\r\n", sends
