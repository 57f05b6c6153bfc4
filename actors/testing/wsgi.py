"""Calling a WSGI application in-process, as a server would: the unit tier's HTTP client for the front door.

``call(app, "POST", "/v1/chat/completions", json={...}, headers={...})`` builds the environ
(``wsgiref.util.setup_testing_defaults``), runs the application, reads its body iterator to
the end and closes it, as waitress does; no socket opens. ``opened(...)`` hands back the
body iterator unread, for a test that leaves a stream part way (then ``close()`` it).

Like the node's server (``actors/http/server.py``), it offers the application a write from any
thread (``environ["atomr.write_now"]``); what is written so is read in its place among the parts
the application yields. ``push=False`` leaves it out, as a plain WSGI server would.
"""

from __future__ import annotations

import io
import json as jsonlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.util import setup_testing_defaults

from actors.http.app import WRITE_NOW

__all__ = ["Opened", "Response", "Written", "call", "environ_for", "opened", "sse_events"]


@dataclass
class Response:
    status: int
    headers: dict[str, str]            # lower-case names
    parts: list[bytes] = field(default_factory=list)   # the body as the application yielded or wrote it
    pushed: int = 0                    # of which written with environ["atomr.write_now"]

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def events(self) -> list[tuple[str | None, Any]]:
        """The body's server-sent events as (event name, data: parsed JSON, or the raw text)."""
        return sse_events(self.body)


def sse_events(body: bytes) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    for block in body.decode("utf-8").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        text = "\n".join(data)
        try:
            out.append((name, jsonlib.loads(text)))
        except ValueError:
            out.append((name, text))
    return out


def environ_for(method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None,
                query: str = "", remote_addr: str = "127.0.0.1", content_length: bool = True,
                **extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                               "REMOTE_ADDR": remote_addr, "wsgi.input": io.BytesIO(body)}
    if content_length:
        environ["CONTENT_LENGTH"] = str(len(body)) if body else ""
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    environ.update(extra)
    setup_testing_defaults(environ)
    return environ


class Written:
    """What the application wrote with ``environ["atomr.write_now"]`` (from any thread), not yet read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[bytes] = []
        self.writes = 0

    def __call__(self, data: bytes) -> None:
        if data:
            with self._lock:
                self._parts.append(bytes(data))
                self.writes += 1

    def take(self) -> list[bytes]:
        with self._lock:
            parts, self._parts = self._parts, []
        return parts


class Opened:
    """A response whose head was sent and whose body is not all read: iterate it, then ``close()``."""

    def __init__(self, status: int, headers: dict[str, str], first: bytes | None, rest: Iterator[bytes],
                 result: Iterable[bytes], written: Written | None = None) -> None:
        self.status, self.headers = status, headers
        self.written = written
        self._parts = self._in_order(first, rest)
        self._result = result

    def _in_order(self, first: bytes | None, rest: Iterator[bytes]) -> Iterator[bytes]:
        # A write made while the application made its next part goes before that part.
        if first is not None:
            yield first
        while True:
            part = next(rest, None)
            if self.written is not None:
                yield from self.written.take()
            if part is None:
                return
            yield part

    def __iter__(self) -> Iterator[bytes]:
        return self._parts

    def __next__(self) -> bytes:
        return next(self._parts)

    def close(self) -> None:
        """What a server does when the response ends or its client leaves (PEP 3333)."""
        close = getattr(self._result, "close", None)
        if close is not None:
            close()


def opened(app: Callable[..., Iterable[bytes]], method: str, path: str, *, json: Any = None, body: bytes = b"",
           headers: dict[str, str] | None = None, push: bool = True, **environ: Any) -> Opened:
    """Run the application up to the first part of its body (when the head is sent, as a server does)."""
    if json is not None:
        body = jsonlib.dumps(json).encode()
        headers = {"content-type": "application/json", **(headers or {})}
    head: list[Any] = []

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        head[:] = [int(status.split()[0]), {k.lower(): v for k, v in response_headers}]

    written = Written() if push else None
    if written is not None:
        environ.setdefault(WRITE_NOW, written)
    result = app(environ_for(method, path, body=body, headers=headers, **environ), start_response)
    parts = iter(result)
    first = next(parts, None)
    if not head:
        raise AssertionError(f"{method} {path}: the application never called start_response")
    return Opened(head[0], head[1], first, parts, result, written)


def call(app: Callable[..., Iterable[bytes]], method: str, path: str, **kw: Any) -> Response:
    """The whole response, its body iterator read to its end and closed."""
    response = opened(app, method, path, **kw)
    try:
        parts = list(response)
    finally:
        response.close()
    return Response(response.status, response.headers, parts,
                    response.written.writes if response.written is not None else 0)
