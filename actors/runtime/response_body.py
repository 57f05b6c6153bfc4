"""Reading a response's body so that a late reader catches up.

http.client decodes a chunked body one transfer chunk per ``read1()``, and a streaming
upstream writes each event as one chunk: a slot that fell behind made one read, one decode
and one frame per event however many were already buffered, and fell further behind
(docs/performance.md, round 4). A streamed, chunked, uncompressed body is therefore read from
the connection's buffer under http.client, once requests has sent the request and read the
headers: each read returns the payload of every chunk already there (``core/chunked.py``).
Anything else (a length-delimited body, whose ``read1`` already returns what is buffered; a
compressed one; a non-streamed call) is read through urllib3 as before.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Any

from actors.core.chunked import ChunkedDecoder

__all__ = ["Urllib3Body", "ChunkedBody", "body_reader"]


class Urllib3Body:
    """A body read through urllib3 (decoded if compressed): one transfer chunk per read when chunked."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def read(self, size: int) -> bytes:
        return self.raw.read1(size, decode_content=True)

    def release(self) -> bool:
        self.raw.release_conn()
        return True


class ChunkedBody:
    """A chunked body read from http.client's buffer under urllib3, once requests has read the
    headers: each read returns the payload of every chunk already there (up to ``size`` bytes
    of the wire), so a late reader catches up in one read."""

    def __init__(self, raw: Any, response: http.client.HTTPResponse) -> None:
        self.raw, self.response = raw, response
        self.fp = response.fp
        self.decoder = ChunkedDecoder()

    def read(self, size: int) -> bytes:
        while not self.decoder.done:
            if self.decoder.error is not None:
                raise self.decoder.error
            data = self.fp.read1(size)   # what is buffered, or one recv: never waits for more
            if not data:
                self.decoder.finish()    # raises: the connection ended inside the body
            payload = self.decoder.feed(data)
            if payload:
                return payload
        return b""

    def socket(self) -> socket.socket | None:
        """The connection's socket, when it is a real one (the unit tier's are not)."""
        sock = getattr(self.fp.raw, "_sock", None)
        return sock if isinstance(sock, socket.socket) else None

    def buffered(self, size: int) -> bytes:
        """What the response's buffer holds already (read with the headers), without waiting:
        after this, the socket holds the rest of the body. Its socket must be non-blocking."""
        try:
            return self.fp.read1(size) or b""
        except ssl.SSLWantReadError:
            return b""

    def release(self) -> bool:
        if self.decoder.extra:
            return False  # bytes after the body: the connection is not fit to carry another request
        self.response.close()  # as http.client ends a body it read itself, so the connection can be reused
        self.raw.release_conn()
        return True


def body_reader(raw: Any, whole: bool) -> Urllib3Body | ChunkedBody:
    """How to read a body: a streamed, chunked, uncompressed one from the buffer (catching up)."""
    response = getattr(raw, "_fp", None)
    if (not whole and isinstance(response, http.client.HTTPResponse) and response.chunked
            and response.fp is not None and response.chunk_left is None
            and raw.headers.get("content-encoding", "identity").strip().lower() in ("", "identity")):
        return ChunkedBody(raw, response)
    return Urllib3Body(raw)
