"""A lean asyncio HTTP/1.1 client for OpenAI-style SSE streams, for benchmarks at K=1000.

At a thousand concurrent 50 ms streams the client reads 20,000 events a second; an HTTP
library's per-read overhead would make the client, not the gateway, the thing measured on a
2-core machine. This is a bare ``asyncio.Protocol``: it writes one request, parses the status
line, headers and a chunked or sized body, splits SSE events and records, per stream, when
each content-bearing event arrived and the text it carried (to check every token arrived
once, in order). Keep-alive connections are reused by :class:`Pool`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any
from urllib.parse import urlsplit

try:
    import orjson

    _loads = orjson.loads
    _dumps = orjson.dumps
except ImportError:  # pragma: no cover - orjson is optional
    import json

    _loads = json.loads

    def _dumps(doc: Any) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

__all__ = ["Pool", "Result", "stream_once"]


class Result:
    """One exchange: status, arrival times of content events, text, and how it ended."""

    __slots__ = ("body", "done", "ended", "error", "events", "parts", "started", "status", "times")

    def __init__(self, started: float) -> None:
        self.started = started
        self.status = 0
        self.times: list[float] = []
        self.parts: list[str] = []
        self.done = False          # [DONE] seen (streams) or the whole body read (non-streamed)
        self.error: str | None = None
        self.ended = 0.0
        self.body = b""
        self.events = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def ttft(self) -> float | None:
        return self.times[0] - self.started if self.times else None

    @property
    def largest_gap(self) -> float:
        t = self.times
        return max((b - a for a, b in zip(t, t[1:])), default=0.0)


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.result: Result | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.head = bytearray()
        self.in_head = True
        self.chunked = False
        self.length: int | None = None
        self.chunk_left = -1        # bytes left in the current chunk (+2 for its CRLF); -1: reading a size line
        self.raw = bytearray()      # undechunked bytes
        self.sse = bytearray()
        self.stream = False
        self.keep_alive = True

    # -- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.result is not None and not self.result.done:
            if self.length is None and not self.chunked and not self.in_head:
                self._finish()  # a body delimited by the close
                return
            self.result.error = self.result.error or f"connection closed ({exc or 'eof'})"
            self._finish()

    def send(self, request: bytes, result: Result) -> asyncio.Future:
        self._reset()
        self.result = result
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def _finish(self) -> None:
        result, waiter = self.result, self.waiter
        self.result = self.waiter = None
        if result is not None:
            result.ended = time.monotonic()
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
        if not self.keep_alive and self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.result is None:
            return
        if self.in_head:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.head[:end]).decode("latin-1").split("\r\n")
            rest = bytes(self.head[end + 4:])
            self.in_head = False
            parts = lines[0].split(" ", 2)
            self.result.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "transfer-encoding" and "chunked" in value:
                    self.chunked = True
                elif name == "content-length":
                    self.length = int(value)
                elif name == "connection" and value == "close":
                    self.keep_alive = False
                elif name == "content-type" and value.startswith("text/event-stream"):
                    self.stream = True
            if not self.chunked and self.length is None:
                self.keep_alive = False
            if not rest:
                if self.length == 0:
                    self.result.done = True
                    self._finish()
                return
            data = rest
        if self.chunked:
            self._dechunk(data)
        else:
            self._body(data)
            if self.length is not None and len(self.raw) >= self.length:
                self._end_of_body()

    def _dechunk(self, data: bytes) -> None:
        buf = self.raw
        buf += data
        pos = 0
        out = []
        while True:
            if self.chunk_left < 0:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(buf[pos:eol]).split(b";")[0] or b"0", 16)
                pos = eol + 2
                if size == 0:
                    del buf[:pos]
                    self._emit(b"".join(out))
                    return self._end_of_body()
                self.chunk_left = size + 2
            take = min(self.chunk_left, len(buf) - pos)
            if take <= 0:
                break
            piece = bytes(buf[pos:pos + take])
            self.chunk_left -= take
            pos += take
            if self.chunk_left < 2:  # a piece ending in (part of) the CRLF
                piece = piece[:len(piece) - (2 - self.chunk_left)]
            out.append(piece)
            if self.chunk_left == 0:
                self.chunk_left = -1
        del buf[:pos]
        if out:
            self._emit(b"".join(out))

    def _body(self, data: bytes) -> None:
        self.raw += data
        if self.stream:
            self._events(data)

    def _emit(self, data: bytes) -> None:
        if self.stream:
            self._events(data)
        else:
            self.result.body += data

    def _events(self, data: bytes) -> None:
        buf = self.sse
        buf += data
        start = 0
        now = time.monotonic()
        result = self.result
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            event = bytes(buf[start:end])
            start = end + 2
            result.events += 1
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    result.done = True
                    continue
                try:
                    doc = _loads(payload)
                except ValueError:
                    result.error = "bad JSON in an event"
                    continue
                if "error" in doc:
                    result.error = str(doc["error"])[:200]
                    continue
                for choice in doc.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        result.times.append(now)
                        result.parts.append(content)
        del buf[:start]

    def _end_of_body(self) -> None:
        if not self.stream:
            self.result.body = bytes(self.raw) if not self.chunked else self.result.body
            self.result.done = self.result.status == 200
        self._finish()


class Pool:
    """Keep-alive connections to one origin; one exchange per connection at a time."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.idle: list[_Conn] = []

    def request_bytes(self, path: str, body: dict[str, Any]) -> bytes:
        raw = _dumps(body)
        return (f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n{self.extra}\r\n").encode() + raw

    async def post(self, path: str, body: dict[str, Any], timeout_s: float) -> Result:
        request = self.request_bytes(path, body)
        result = Result(time.monotonic())
        conn = None
        while self.idle:
            candidate = self.idle.pop()
            if not candidate.closed:
                conn = candidate
                break
        try:
            if conn is None:
                loop = asyncio.get_running_loop()
                _, conn = await asyncio.wait_for(
                    loop.create_connection(_Conn, self.host, self.port), timeout=max(0.01, timeout_s))
            await asyncio.wait_for(conn.send(request, result), timeout=max(0.01, timeout_s - (time.monotonic()
                                                                                              - result.started)))
        except (TimeoutError, OSError) as exc:
            result.error = result.error or f"{type(exc).__name__}: {exc}"
            result.ended = time.monotonic()
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            return result
        if conn.keep_alive and not conn.closed:
            self.idle.append(conn)
        return result

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


async def stream_once(url: str, path: str, body: dict[str, Any], timeout_s: float,
                      headers: dict[str, str] | None = None) -> Result:
    pool = Pool(url, headers)
    try:
        return await pool.post(path, body, timeout_s)
    finally:
        pool.close()
