"""One HTTP attempt (an exchange) on its slot's thread: the phase it reached, bounded reads, prompt stops.

A slot's thread (``slot.py``) runs the exchange and hands every outcome to a sink as a reader
event (``actors.core.streaming``); it never touches Thespian (sends from another thread are lost).

Where an attempt failed is recorded by the connection itself (``upstream_session.py``), and
whether the provider has the request (``sent``) depends on exactly that
(``actors.core.transport``). Reads catch up (``response_body.py``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import requests
import urllib3

from actors.core.streaming import END, HttpStatus, Opened, Overflow, ReaderEvent, TransportFailed, WholeBody
from actors.core.transport import Phase
from actors.providers.base import HttpRequest
from actors.runtime.body_poller import ENDED, OVERFLOWED, poller
from actors.runtime.response_body import ChunkedBody, Urllib3Body, body_reader
from actors.runtime.upstream_session import DeadlineReached, PhaseTracker, send, this_thread

__all__ = ["HttpExchange", "READ_CHUNK", "MAX_ERROR_BODY"]

READ_CHUNK = MAX_ERROR_BODY = 64 * 1024   # one read's most (whatever has arrived, so no token is held back)


def _timed_out(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, DeadlineReached):
            return True
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            return False  # refused or unresolvable: urllib3 derives it from ConnectTimeoutError all the same
        if isinstance(exc, (TimeoutError, socket.timeout, urllib3.exceptions.TimeoutError,
                            requests.exceptions.Timeout)):
            return True
        inner = exc.args[1] if isinstance(exc, urllib3.exceptions.ProtocolError) and len(exc.args) > 1 else None
        if isinstance(inner, BaseException):
            exc = inner
        else:
            exc = exc.__cause__ or exc.__context__ or getattr(exc, "reason", None)
            if not isinstance(exc, BaseException):
                return False
        seen += 1
    return False


def _names(exc: BaseException | None) -> str:
    """The exception's type chain (never its text: that holds the URL, which may carry a key)."""
    names: list[str] = []
    seen = 0
    while exc is not None and seen < 4:
        names.append(type(exc).__name__)
        inner = exc.args[1] if isinstance(exc, urllib3.exceptions.ProtocolError) and len(exc.args) > 1 else None
        exc = inner if isinstance(inner, BaseException) else (exc.__cause__ or exc.__context__)
        seen += 1
    return "/".join(dict.fromkeys(names))



Sink = Callable[[ReaderEvent], bool]


class HttpExchange:
    """One attempt's HTTP: :meth:`run` on its slot's thread (for a non-streamed call, its one
    event is :class:`WholeBody` or a failure), :meth:`stop` from the actor thread.

    Every event goes to ``sink``, which returns False to stop reading (the attempt was ended);
    the last is exactly one of END, WholeBody, HttpStatus, Overflow or TransportFailed, unless
    the exchange was stopped first. No read outlasts ``deadline`` (unix time): a trickle that
    satisfies every read still ends there, as a timeout."""

    def __init__(self, http: HttpRequest, timeouts: tuple[float, float], max_body_bytes: int,
                 deadline: float, whole: bool = False) -> None:
        self.http = http
        self.timeouts = timeouts
        self.max_body_bytes = max_body_bytes
        self.deadline = deadline
        self.whole = whole
        self.tracker = PhaseTracker(deadline)
        self.cancelled = threading.Event()

    @property
    def phase(self) -> Phase:
        return self.tracker.phase

    def run(self, session: requests.Session, sink: Sink) -> None:
        if self.cancelled.is_set():
            return  # ended (deadline, cancel) before its slot took it: nothing goes out
        this_thread.tracker = self.tracker
        resp = None
        try:
            http = self.http
            resp = send(session, http, self.timeouts)
            self.tracker.headers = True
            if self.cancelled.is_set():
                return
            if resp.status_code >= 300:
                body = self._read_upto(resp, MAX_ERROR_BODY)
                if not self.cancelled.is_set():
                    sink(HttpStatus(resp.status_code, dict(resp.headers), body))
                return
            if not self.whole and not sink(Opened()):
                return
            reader, total, limit = body_reader(resp.raw, self.whole), 0, self.max_body_bytes
            if isinstance(reader, ChunkedBody) and (sock := reader.socket()) is not None:
                outcome = self._pump(reader, sock, sink)   # read by the process's poller; its end told here
                if outcome == OVERFLOWED:
                    sink(Overflow(limit))
                elif outcome == ENDED:
                    self.tracker.sock = None
                    if reader.release():
                        resp = None
                    sink(END)
                return
            parts: list[bytes] = []
            while not self.cancelled.is_set():
                data = self._read(reader.read, READ_CHUNK)
                if not data:
                    self.tracker.sock = None
                    if reader.release():  # read to the end: the connection goes back to the pool
                        resp = None
                    sink(WholeBody(b"".join(parts)) if self.whole else END)
                    return
                total += len(data)
                if total > limit:
                    sink(Overflow(limit))
                    return
                if self.whole:
                    parts.append(data)
                elif not sink(data):
                    return
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one event for the sink
            if not self.cancelled.is_set():
                sink(TransportFailed(self.tracker.phase, _timed_out(exc), _names(exc)))
        finally:
            this_thread.tracker = None
            if resp is not None:
                resp.close()

    def _read(self, read: Callable[[int], bytes], size: int) -> bytes:
        remaining = self.deadline - time.time()
        if remaining <= 0:
            raise DeadlineReached()
        if remaining < self.timeouts[1] and self.tracker.sock is not None:
            self.tracker.sock.settimeout(remaining)  # so the last read ends at the deadline
        return read(size)

    def _pump(self, reader: ChunkedBody, sock: socket.socket, sink: Sink) -> str:
        """The body, read by the process's poller; how it ended (what raised, re-raised here)."""
        if time.time() >= self.deadline:
            raise DeadlineReached()
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            return poller().pump(sock, reader.buffered(READ_CHUNK), reader.decoder, sink, self.max_body_bytes,
                                 self.timeouts[1], self.deadline, self.cancelled)
        finally:
            try:
                sock.settimeout(timeout)   # as the pool lends the connection out again
            except OSError:
                pass

    def _read_upto(self, resp: requests.Response, limit: int) -> bytes:
        parts, size = [], 0
        body = Urllib3Body(resp.raw)
        while size < limit and not self.cancelled.is_set():
            data = self._read(body.read, min(READ_CHUNK, limit - size))
            if not data:
                break
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    def stop(self) -> None:
        """End the exchange now: a blocked read returns at once, and the reader discards the connection.

        Only the socket is shut down here; the response is closed by the slot's thread, which
        owns it. Closing it from this thread too would race the reader's own close: that one
        could close the pooled connection object after the next exchange took it from the pool.
        """
        tracker = self.tracker
        with tracker.lock:
            self.cancelled.set()
            tracker.stopped = True
            # Stopped while the request was being written: it may all be in the kernel already (a
            # slot thread can be descheduled between the write and noting it), so it counts as sent.
            tracker.written = tracker.written or tracker.writing
            sock = tracker.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
