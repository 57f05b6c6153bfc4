"""An in-memory network for the worker: the unit tier's transport (``actors.runtime.transport``).

In the spirit of ``httpx.MockTransport(handler)``: each HTTP request a connection carries is
answered by ``handler(request) -> MockResponse``. It stands in for the socket, so everything
above it runs for real: requests, urllib3 and http.client write and parse real HTTP/1.1
bytes (chunked bodies, keep-alive, Connection: close), and the worker's ``PhaseAdapter``
records how far each attempt got. Each failure lands in the phase a real network puts it in:

============================  ==========================  ====================================
what                          how                         phase (``core/transport.py``)
============================  ==========================  ====================================
connection refused            ``fail_next(REFUSE)``       CONNECT (not sent)
connect timeout               ``fail_next(CONNECT_TIMEOUT)`` CONNECT (not sent)
reset while the request is    ``fail_next(RESET_ON_SEND)``  SEND (not sent)
written
peer never reads the request  ``fail_next(STALL_ON_SEND)``  SEND, timed out (not sent)
closed after the request      ``MockResponse.hang_up()``   AWAIT_HEADERS (sent)
no answer                     ``MockResponse.silent()``    AWAIT_HEADERS, timed out (sent)
broken mid-body               an exception, or ``EOF``,    BODY (sent)
                              among the parts
============================  ==========================  ====================================

A response's ``parts`` stream as chunked transfer encoding, one transfer chunk each; a tuple
of bytes sends its parts as chunks that arrive together (as a server's writes that queued up
while its client was busy), a float pauses that long, a ``threading.Event`` holds the body
until it is set (at most ``hold_s``). Pauses and
holds honour the socket's timeout as a real read would (``socket.timeout``), and a
``shutdown`` from another thread ends a blocked read at once, as the worker's stop expects.

``listen(port)`` makes ``127.0.0.1:port`` a stream channel's listener (``MockListener``) that
keeps what the worker writes to it; any other loopback port refuses. HTTPS is spoken in
plain text: the transport is the far end of the connection (``terminates_tls``).

Nothing here opens a socket; ``fileno()`` is a pipe's, readable once the peer has hung up,
which is how urllib3 tells a dead kept-alive connection.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import responses as REASONS
from typing import Any

__all__ = ["MockTransport", "MockRequest", "MockResponse", "MockListener", "REFUSE", "CONNECT_TIMEOUT",
           "RESET_ON_SEND", "STALL_ON_SEND", "EOF"]

REFUSE, CONNECT_TIMEOUT, RESET_ON_SEND, STALL_ON_SEND = "refuse", "connect-timeout", "reset-on-send", "stall-on-send"
_CONNECT_FAULTS = (REFUSE, CONNECT_TIMEOUT)
_WAIT_STEP_S = 0.01


class _Eof:
    def __repr__(self) -> str:
        return "EOF"


EOF: Any = _Eof()   # among a response's parts: the peer hangs up there, mid-body


@dataclass(frozen=True)
class _Wait:
    """A stretch of the answer with nothing sent: until ``event`` is set (if any), at most ``limit_s``."""

    event: threading.Event | None
    limit_s: float | None


@dataclass
class MockRequest:
    method: str
    target: str                    # the request line's target: the path and query (or a proxy's absolute URL)
    headers: dict[str, str]        # lower-case names
    body: bytes
    host: str
    port: int
    at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        """The URL asked for (the scheme told by the port: the transport sees no TLS)."""
        if "://" in self.target:
            return self.target
        scheme = "https" if self.port == 443 else "http"
        return f"{scheme}://{self.headers.get('host', f'{self.host}:{self.port}')}{self.target}"

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class MockResponse:
    """One answer: a status, headers and a body (bytes, a JSON value, or ``parts`` to stream)."""

    def __init__(self, status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
                 parts: list[Any] | None = None, *, hold_s: float = 5.0, close: bool = False) -> None:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.status = status
        self.body = body or b""
        self.parts = list(parts) if parts is not None else None
        self.headers = {"content-type": "application/json", **(headers or {})}
        self.hold_s = hold_s
        self.close = close
        self.before_headers: str | None = None   # "hang-up" or "silent": no status line at all

    @classmethod
    def hang_up(cls) -> "MockResponse":
        """Read the request, then close the connection without a word."""
        answer = cls()
        answer.before_headers = "hang-up"
        return answer

    @classmethod
    def silent(cls) -> "MockResponse":
        """Read the request, then never answer (the client's read times out)."""
        answer = cls()
        answer.before_headers = "silent"
        return answer

    def _head(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if self.parts is not None:
            lines.append("transfer-encoding: chunked")
        else:
            lines.append(f"content-length: {len(self.body)}")
        if self.close:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def wire(self) -> Iterator[Any]:
        """What the peer sends, in order: bytes, and pauses, holds, failures and hang-ups."""
        if self.before_headers == "hang-up":
            yield EOF
            return
        if self.before_headers == "silent":
            yield _Wait(None, None)   # only the reader's timeout or a shutdown ends it
            return
        yield self._head()
        if self.parts is None:
            if self.body:
                yield self.body
        else:
            for part in self.parts:
                if isinstance(part, bytes):
                    if part:
                        yield b"%x\r\n%s\r\n" % (len(part), part)
                elif isinstance(part, tuple):
                    yield b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in part if p)
                elif isinstance(part, (int, float)) and not isinstance(part, bool):
                    yield _Wait(None, float(part))
                elif isinstance(part, threading.Event):
                    yield _Wait(part, self.hold_s)
                elif part is EOF or isinstance(part, BaseException):
                    yield part
                else:
                    raise TypeError(f"a response part is bytes, a tuple of bytes, a pause, an Event, EOF or an exception: "
                                    f"{part!r}")
            yield b"0\r\n\r\n"
        if self.close:
            yield EOF


class MockListener:
    """A stream channel's listener on a loopback port: keeps every byte written to it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received = bytearray()
        self.connections = 0
        self.refuse = False           # connecting is refused
        self.broken = False           # writes fail (the peer went away)
        self.hold: threading.Event | None = None   # writes wait for it (a consumer slow to read)
        self.holding = 0              # writes waiting on ``hold`` now
        self.writes = 0               # writes taken (a batch of frames is one)
        self.lock = threading.Lock()

    def frames(self, codec: Any) -> list[dict[str, Any]]:
        """The frames' bodies, decoded with ``codec`` (``actors.core.frames.FrameCodec``)."""
        from actors.core.frames import FrameDecoder

        with self.lock:
            data = bytes(self.received)
        return FrameDecoder(codec).feed(data)


class MockTransport:
    """Connections to nowhere: upstreams answered by ``handler``, loopback listeners kept in memory."""

    terminates_tls = True

    def __init__(self, handler: Callable[[MockRequest], MockResponse]) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []
        self.connects = 0
        self.listeners: dict[int, MockListener] = {}
        self._faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._open: list[_MockSocket] = []

    def fail_next(self, *faults: str) -> "MockTransport":
        """Connection-level faults, taken one by one by the next connects (REFUSE, CONNECT_TIMEOUT)
        or the next requests written (RESET_ON_SEND, STALL_ON_SEND)."""
        with self._lock:
            self._faults.extend(faults)
        return self

    def listen(self, port: int) -> MockListener:
        self.listeners[port] = MockListener(port)
        return self.listeners[port]

    def _take_fault(self, kinds: tuple[str, ...]) -> str | None:
        with self._lock:
            if self._faults and self._faults[0] in kinds:
                return self._faults.popleft()
        return None

    def connect(self, host: str, port: int, timeout: float | None, *,
                source_address: Any = None, socket_options: Any = None) -> Any:
        if host in ("127.0.0.1", "localhost", "::1") and port not in self.listeners:
            raise ConnectionRefusedError(111, "Connection refused (nothing listens in the mock network)")
        if port in self.listeners and host in ("127.0.0.1", "localhost", "::1"):
            listener = self.listeners[port]
            if listener.refuse:
                raise ConnectionRefusedError(111, "Connection refused")
            listener.connections += 1
            return self._opened(_ChannelSocket(listener, timeout))
        fault = self._take_fault(_CONNECT_FAULTS)
        if fault == REFUSE:
            raise ConnectionRefusedError(111, "Connection refused")
        if fault == CONNECT_TIMEOUT:
            time.sleep(min(timeout or 0.0, 0.05))
            raise socket.timeout("timed out")
        with self._lock:
            self.connects += 1
        return self._opened(_MockSocket(self, host, port, timeout))

    def _opened(self, sock: Any) -> Any:
        with self._lock:
            self._open = [s for s in self._open if not s.closed] + [sock]
        return sock

    def close(self) -> None:
        """Hang up every connection still open (a test's end): blocked reads return, fds are freed."""
        with self._lock:
            open_now, self._open = self._open, []
        for sock in open_now:
            sock.shutdown(socket.SHUT_RDWR)
            sock._close_now()

    # called by the sockets
    def _answer(self, request: MockRequest) -> MockResponse:
        with self._lock:
            self.requests.append(request)
        return self.handler(request)


class _SocketBase:
    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._shut = threading.Event()
        self._rfd, self._wfd = os.pipe()
        self._fds_lock = threading.Lock()
        self.closed = False
        self._files = 0             # open makefile()s: as a real socket's, close() waits for them
        self._close_asked = False

    def fileno(self) -> int:
        return self._rfd

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def setsockopt(self, *args: Any) -> None:
        pass

    def getsockopt(self, *args: Any) -> int:
        return 0

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def _hang_up(self) -> None:
        """The peer closed: readable for urllib3's liveness check."""
        with self._fds_lock:
            if not self.closed:
                try:
                    os.write(self._wfd, b"\0")
                except OSError:
                    pass

    def shutdown(self, how: int) -> None:
        self._shut.set()
        self._hang_up()   # as a real socket's: readable (at its end) from now on

    def close(self) -> None:
        with self._fds_lock:
            self._close_asked = True
            if self._files:
                return   # http.client closes a "Connection: close" socket while its response still reads
        self._close_now()

    def _file_closed(self) -> None:
        with self._fds_lock:
            self._files -= 1
            last = self._files == 0 and self._close_asked
        if last:
            self._close_now()

    def _close_now(self) -> None:
        self._shut.set()
        with self._fds_lock:
            if self.closed:
                return
            self.closed = True
            for fd in (self._rfd, self._wfd):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def makefile(self, mode: str = "rb", buffering: int | None = None, **_: Any) -> Any:
        if "r" not in mode:
            raise ValueError("the mock socket's file is for reading")
        with self._fds_lock:
            self._files += 1
        return io.BufferedReader(_SocketReader(self), buffer_size=8192)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        raise OSError(107, "Transport endpoint is not connected")

    def send(self, data: Any, flags: int = 0) -> int:
        self.sendall(data)
        return len(data)

    def sendall(self, data: Any, flags: int = 0) -> None:
        raise NotImplementedError

    def _wait(self, until: Callable[[], bool], limit_s: float | None) -> bool:
        """Wait until ``until()`` or the socket is shut, at most ``limit_s`` (None: no limit).
        True when ``until()`` came true."""
        end = None if limit_s is None else time.monotonic() + limit_s
        while not until():
            if self._shut.is_set():
                return False
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._shut.wait(_WAIT_STEP_S if left is None else min(_WAIT_STEP_S, left))
        return True


class _SocketReader(io.RawIOBase):
    def __init__(self, sock: _SocketBase) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock._file_closed()
        super().close()


class _MockSocket(_SocketBase):
    """One connection to a mock upstream: requests in, the handler's answers out."""

    def __init__(self, transport: MockTransport, host: str, port: int, timeout: float | None) -> None:
        super().__init__(timeout)
        self.transport, self.host, self.port = transport, host, port
        self._inbox = bytearray()
        self._out = bytearray()
        self._wire: Iterator[Any] | None = None
        self._hold: tuple[threading.Event | None, float | None] | None = None   # what is waited out, until when
        self._answered = threading.Event()
        self._hung_up = False
        self._fault: str | None = None                # a send fault taken for the request being written

    # -- the request --------------------------------------------------------------------

    def sendall(self, data: Any, flags: int = 0) -> None:
        if self._shut.is_set() or self.closed:
            raise OSError(9, "Bad file descriptor")
        if self._hung_up:
            raise BrokenPipeError(32, "Broken pipe")
        if not self._inbox and self._fault is None:
            self._fault = self.transport._take_fault((RESET_ON_SEND, STALL_ON_SEND))
        if self._fault == RESET_ON_SEND:
            self._fault = None
            self._hung_up = True
            self._hang_up()
            raise ConnectionResetError(104, "Connection reset by peer")
        if self._fault == STALL_ON_SEND:
            self._wait(lambda: False, self._timeout)
            raise socket.timeout("timed out") if not self._shut.is_set() else OSError(9, "Bad file descriptor")
        self._inbox += bytes(data)
        self._parse()

    def _parse(self) -> None:
        head_end = self._inbox.find(b"\r\n\r\n")
        if head_end < 0:
            return
        lines = bytes(self._inbox[:head_end]).decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self._inbox) < head_end + 4 + length:
            return
        body = bytes(self._inbox[head_end + 4:head_end + 4 + length])
        del self._inbox[:head_end + 4 + length]
        request = MockRequest(method, target, headers, body, self.host, self.port)
        self._wire = iter(self.transport._answer(request).wire())

    # -- the answer ---------------------------------------------------------------------

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        while not self._out:
            if self._shut.is_set() or self._hung_up:
                return 0
            if self._wire is None:   # nothing asked: nothing comes (a real server stays silent too)
                if not self._wait(lambda: self._wire is not None, self._timeout):
                    return self._timed_out()
                continue
            if not self._advance():
                return self._timed_out()
        size = min(len(self._out), nbytes or len(buffer), len(buffer))
        buffer[:size] = self._out[:size]
        del self._out[:size]
        return size

    def _timed_out(self) -> int:
        if self._shut.is_set() or self._hung_up:
            return 0
        raise socket.timeout("timed out")

    def _advance(self) -> bool:
        """Take the answer's next item; False when the read timed out waiting on it."""
        if self._hold is None:
            assert self._wire is not None
            item = next(self._wire, None)
            if item is None:
                self._wire = None     # answered in full: the connection may carry the next request
                return True
            if isinstance(item, bytes):
                self._out += item
                return True
            if item is EOF:
                self._hung_up = True
                self._hang_up()
                return True
            if isinstance(item, BaseException):
                self._hung_up = True   # a connection that failed mid-body carries nothing more
                self._hang_up()
                raise item
            ends = None if item.limit_s is None else time.monotonic() + item.limit_s
            self._hold = (item.event, ends)
        event, ends = self._hold
        done = self._wait(lambda: (event is not None and event.is_set()) or (ends is not None and time.monotonic() >= ends),
                          self._timeout)
        if done or self._shut.is_set():
            self._hold = None
            return True
        return False


class _ChannelSocket(_SocketBase):
    """A connection to a stream channel's listener: what is written is kept."""

    def __init__(self, listener: MockListener, timeout: float | None) -> None:
        super().__init__(timeout)
        self.listener = listener

    def sendall(self, data: Any, flags: int = 0) -> None:
        listener = self.listener
        hold = listener.hold
        if hold is not None and not hold.is_set():
            with listener.lock:
                listener.holding += 1
            try:
                if not self._wait(hold.is_set, self._timeout):
                    raise socket.timeout("timed out") if not self._shut.is_set() else OSError(9, "Bad file descriptor")
            finally:
                with listener.lock:
                    listener.holding -= 1
        if self._shut.is_set() or self.closed:
            raise OSError(9, "Bad file descriptor")
        if listener.broken:
            raise BrokenPipeError(32, "Broken pipe")
        with listener.lock:
            listener.writes += 1
            listener.received += bytes(data)
