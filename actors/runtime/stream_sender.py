"""The worker's end of the stream channel: chunks as signed frames on a loopback socket.

A Thespian message costs about a millisecond of CPU to send on this machine; a signed frame
on a socket costs tens of microseconds (docs/performance.md). A streamed request may name
the stream channel of the process that sent it (``InferenceRequest.channel``: a loopback
port and that process's token); the worker keeps one connection per such process and
writes each chunk there. Everything else (the request, FirstToken, the attempt's result,
the terminal) stays a Thespian message, so the engine still owns the one terminal.

A worker only ever connects to 127.0.0.1 (through the process's transport,
``actors.runtime.transport``): a request cannot make it open a connection elsewhere. When the channel cannot be used (no key configured, refused, closed, slow to
drain) the chunk goes as a Thespian message instead; the caller orders chunks by ``seq``
whichever way each came.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from actors.core.frames import FrameCodec, chunk_body
from actors.runtime import transport
from actors.types import TokenChunk

__all__ = ["StreamSender", "ChannelTo", "use_keyring", "sender"]

CONNECT_TIMEOUT_S = 1.0
SEND_TIMEOUT_S = 2.0        # a consumer this far behind gets its chunks as Thespian messages
MAX_CONNECTIONS = 256       # consumer processes one worker keeps a connection to
_TOKEN_LEN = 64

_codec: FrameCodec | None = None
_sender: "StreamSender | None" = None


def use_keyring(keyring: Any) -> None:
    """Set by the node before it forks its actors (the runtime layer never reads keys itself)."""
    global _codec, _sender
    _codec = FrameCodec(keyring) if keyring is not None else None
    _sender = None


def sender() -> "StreamSender | None":
    """This process's sender, or None when no key was configured (every chunk goes by Thespian)."""
    global _sender
    if _sender is None and _codec is not None:
        _sender = StreamSender(_codec, transport.installed())
    return _sender


def _target(channel: Any) -> tuple[int, str] | None:
    if not isinstance(channel, dict):
        return None
    port, token = channel.get("port"), channel.get("token")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    if not isinstance(token, str) or not 0 < len(token) <= _TOKEN_LEN:
        return None
    return port, token


class ChannelTo:
    """One request's stream channel (``InferenceRequest.channel``) through this process's sender."""

    def __init__(self, out: "StreamSender", channel: Any) -> None:
        self.out, self.channel = out, channel

    def send(self, chunk: TokenChunk) -> bool:
        return self.out.send(self.channel, chunk.request_id, chunk.seq, chunk.text, chunk.tool_calls)

    @property
    def last_failure(self) -> str:
        return self.out.last_failure


class StreamSender:
    def __init__(self, codec: FrameCodec, network: transport.Transport | None = None) -> None:
        self.codec = codec
        self.network = network or transport.TcpTransport()
        self.connections: dict[tuple[int, str], socket.socket] = {}
        self.failed: set[tuple[int, str]] = set()   # refused once: Thespian for the rest of this process
        # The actor thread and a relaying reader thread (runtime/delivery.py) both write frames.
        self._lock = threading.Lock()
        self.last_failure = ""

    def send(self, channel: Any, request_id: str, seq: int, text: str, tool_calls: list[dict[str, Any]]) -> bool:
        """True when the chunk was written to the channel; False: send it another way."""
        target = _target(channel)
        if target is None or target in self.failed:
            return False
        frame = self.codec.encode(chunk_body(request_id, seq, text, tool_calls))
        with self._lock:
            return self._send(target, frame)

    def _send(self, target: tuple[int, str], frame: bytes) -> bool:
        sock = self.connections.get(target)
        try:
            if sock is None:
                sock = self._connect(target)
            sock.sendall(frame)
            return True
        except OSError as exc:
            # Not logged here: a relaying reader thread may be the caller, and only the actor
            # thread may log (a log record is a Thespian message). The actor logs the fallback.
            self._drop(target)
            if sock is None:
                self.failed.add(target)
            self.last_failure = f"port {target[0]}: {type(exc).__name__}"
            return False

    def _connect(self, target: tuple[int, str]) -> socket.socket:
        if len(self.connections) >= MAX_CONNECTIONS:
            oldest = next(iter(self.connections))
            self._drop(oldest)
        port, token = target
        sock = self.network.connect("127.0.0.1", port, CONNECT_TIMEOUT_S)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendall(self.codec.encode({"hello": token}))
        except OSError:
            sock.close()
            raise
        self.connections[target] = sock
        return sock

    def _drop(self, target: tuple[int, str]) -> None:
        sock = self.connections.pop(target, None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        for target in list(self.connections):
            self._drop(target)
