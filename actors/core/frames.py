"""Signed frames for the stream channel: streamed chunks off Thespian, on a plain socket.

One frame is ``length (u32, big-endian) | key id length (u8) | key id | body | MAC``, the MAC
being HMAC-SHA256 over everything after the length with the wire key named by the id (the
same keys that sign Thespian frames). Bodies are JSON objects, so nothing read from the
socket is ever unpickled. A frame that is too long, badly signed, signed with an unknown
key or not a JSON object raises :class:`FrameRefused`; the reader then drops the connection.
"""

from __future__ import annotations

import hmac
import json
import socket
import struct
from typing import Any, Protocol

__all__ = ["FrameCodec", "FrameDecoder", "FrameRefused", "MAX_FRAME_BYTES", "chunk_body", "chunk_fields",
           "loopback_listener"]

MAX_FRAME_BYTES = 32 * 1024 * 1024   # a chunk's text is bounded by the deployment's response limits
MAC_BYTES = 32
_LENGTH = struct.Struct(">I")


class FrameRefused(ValueError):
    """A frame that must not be believed; the connection it came on is closed."""


class _Key(Protocol):
    key_id: str

    def mac(self, data: Any) -> bytes: ...


class _KeyRing(Protocol):
    signing: _Key
    by_id: dict[bytes, _Key]


class FrameCodec:
    """Signs frames with the ring's signing key; accepts frames signed with any key of the ring."""

    def __init__(self, keyring: _KeyRing) -> None:
        self.keyring = keyring
        key_id = keyring.signing.key_id.encode("ascii")
        self._prefix = bytes([len(key_id)]) + key_id
        self._sign = keyring.signing.mac

    def encode(self, body: dict[str, Any]) -> bytes:
        signed = self._prefix + json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return _LENGTH.pack(len(signed) + MAC_BYTES) + signed + self._sign(signed)

    def decode(self, frame: memoryview) -> dict[str, Any]:
        """One frame's body (everything after the length)."""
        if len(frame) < 1 + MAC_BYTES:
            raise FrameRefused("truncated frame")
        id_len = frame[0]
        signed, tag = frame[:-MAC_BYTES], frame[-MAC_BYTES:]
        key = self.keyring.by_id.get(bytes(frame[1:1 + id_len]))
        if key is None:
            raise FrameRefused("signed with a key this process does not accept")
        if len(signed) < 1 + id_len or not hmac.compare_digest(key.mac(signed), tag):
            raise FrameRefused("bad signature")
        try:
            body = json.loads(bytes(signed[1 + id_len:]))
        except ValueError:
            raise FrameRefused("not JSON") from None
        if not isinstance(body, dict):
            raise FrameRefused("not a JSON object")
        return body


class FrameDecoder:
    """Bytes of one connection in, whole frames' bodies out."""

    def __init__(self, codec: FrameCodec, max_frame_bytes: int = MAX_FRAME_BYTES,
                 first_frame_bytes: int | None = None) -> None:
        self.codec = codec
        self.max_frame_bytes = max_frame_bytes
        # A bound for the first frame alone (a connection's greeting), so that an unauthenticated
        # peer cannot make the reader buffer a large frame before its MAC is checked.
        self._next_limit = first_frame_bytes or max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        bodies = []
        offset = 0
        view = memoryview(self._buffer)
        try:
            while len(view) - offset >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(view, offset)
                if length > self._next_limit:
                    raise FrameRefused(f"a frame of {length} bytes (at most {self._next_limit})")
                end = offset + _LENGTH.size + length
                if len(view) < end:
                    break
                bodies.append(self.codec.decode(view[offset + _LENGTH.size:end]))
                self._next_limit = self.max_frame_bytes
                offset = end
        finally:
            view.release()
        del self._buffer[:offset]
        return bodies


def chunk_body(request_id: str, seq: int, text: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """A TokenChunk as a frame body (short keys: one frame per coalesced chunk)."""
    body: dict[str, Any] = {"r": request_id, "s": seq, "t": text}
    if tool_calls:
        body["c"] = tool_calls
    return body


def chunk_fields(body: dict[str, Any]) -> tuple[str, int, str, list[dict[str, Any]]] | None:
    """The TokenChunk fields of a frame body, or None when it is not a well-formed chunk."""
    request_id, seq, text, tools = body.get("r"), body.get("s"), body.get("t", ""), body.get("c", [])
    if not isinstance(request_id, str) or not isinstance(text, str) or not isinstance(tools, list):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return None
    if not all(isinstance(t, dict) for t in tools):
        return None
    return request_id, seq, text, tools


def loopback_listener(backlog: int = 256) -> socket.socket:
    """A non-blocking listening socket on a free loopback port: where a channel's frames arrive
    (the stream receiver's, an engine's control listener)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener
