"""One HTTP attempt on a reader thread: the phase it reached, bounded reads, prompt stops.

The worker's actor thread never blocks on the network; this thread does nothing else. It
reports every outcome as a reader event (``actors.core.streaming``) on a bounded queue, so a
fast upstream is held back by TCP rather than buffered here, and it never touches Thespian.

Where an attempt failed is recorded by the connection itself (connected, request written,
headers received): requests folds all of those into ``ConnectionError``, and whether the
provider has the request (``sent``) depends on exactly that (``actors.core.transport``).
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from actors.core.streaming import END, HttpStatus, Opened, Overflow, TransportFailed, WholeBody
from actors.core.transport import Phase
from actors.providers.base import HttpRequest

__all__ = ["Attempt", "PhaseAdapter", "QUEUE_ITEMS", "READ_CHUNK", "MAX_ERROR_BODY"]

READ_CHUNK = 64 * 1024      # one read's most; read1 returns whatever has arrived, so a token is not held back
QUEUE_ITEMS = 32            # at most QUEUE_ITEMS * READ_CHUNK bytes wait for the actor thread
MAX_ERROR_BODY = 64 * 1024
_PUT_POLL_S = 0.05

_current = threading.local()


class _Tracker:
    __slots__ = ("connected", "written", "headers", "sock")

    def __init__(self) -> None:
        self.connected = self.written = self.headers = False
        self.sock: socket.socket | None = None

    @property
    def phase(self) -> Phase:
        if self.headers:
            return Phase.BODY
        if self.written:
            return Phase.AWAIT_HEADERS
        return Phase.SEND if self.connected else Phase.CONNECT


class _Tracked:
    """Mixed into urllib3's connections: tells the attempt on this thread how far it got."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        tracker = getattr(_current, "tracker", None)
        if tracker is not None:
            tracker.connected, tracker.sock = True, self.sock  # type: ignore[attr-defined]

    def request(self, *args: Any, **kw: Any) -> None:
        tracker = getattr(_current, "tracker", None)
        if tracker is not None and self.sock is not None:  # type: ignore[attr-defined]  # a kept-alive connection
            tracker.connected, tracker.sock = True, self.sock  # type: ignore[attr-defined]
        super().request(*args, **kw)  # type: ignore[misc]
        if tracker is not None:
            tracker.written = True


class _HTTPConnection(_Tracked, HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class PhaseAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose connections record the phase an attempt reached."""

    def init_poolmanager(self, *args: Any, **kw: Any) -> None:
        super().init_poolmanager(*args, **kw)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **kw: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kw)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def _timed_out(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, _DeadlineReached):
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


def _names(exc: BaseException) -> str:
    """The exception's type chain (never its text: that holds the URL, which may carry a key)."""
    names, seen = [], 0
    while exc is not None and seen < 4:
        names.append(type(exc).__name__)
        inner = exc.args[1] if isinstance(exc, urllib3.exceptions.ProtocolError) and len(exc.args) > 1 else None
        exc = inner if isinstance(inner, BaseException) else (exc.__cause__ or exc.__context__)
        seen += 1
    return "/".join(dict.fromkeys(names))


class _DeadlineReached(Exception):
    pass


class Attempt:
    """One attempt: :meth:`run` on the reader thread (or inline, for a non-streamed call:
    its one event is then :class:`WholeBody` or a failure), :meth:`stop` from the actor thread.

    No read outlasts ``deadline`` (unix time): a trickle that satisfies every read still ends
    there, as a timeout."""

    def __init__(self, http: HttpRequest, timeouts: tuple[float, float], max_body_bytes: int,
                 deadline: float, whole: bool = False, notify: Any = None,
                 on_data: Callable[[bytes], bool | None] | None = None) -> None:
        self.http = http
        self.notify = notify    # called (on the reader thread) after each event is queued: wakes the actor
        # Called on the reader thread with each piece of the body instead of queueing it: True when
        # it took the piece, None to queue it after all, False to stop reading (it queued the outcome).
        self.on_data = on_data
        self.queued_at: float | None = None  # monotonic time of the oldest event the actor has not looked at
        self.timeouts = timeouts
        self.max_body_bytes = max_body_bytes
        self.deadline = deadline
        self.whole = whole
        self.events: queue.Queue = queue.Queue(maxsize=QUEUE_ITEMS)
        self.tracker = _Tracker()
        self.cancelled = threading.Event()
        self.response: requests.Response | None = None
        self.thread: threading.Thread | None = None

    @property
    def phase(self) -> Phase:
        return self.tracker.phase

    def start(self, session: requests.Session, name: str) -> None:
        self.thread = threading.Thread(target=self.run, args=(session,), name=name, daemon=True)
        self.thread.start()

    def put(self, item: Any) -> bool:
        """Queue an event for the actor (from the reader thread); False once the attempt is stopped."""
        return self._put(item)

    def _put(self, item: Any) -> bool:
        while not self.cancelled.is_set():
            try:
                self.events.put(item, timeout=_PUT_POLL_S)
                if self.queued_at is None:
                    self.queued_at = time.monotonic()
                if self.notify is not None:
                    self.notify()
                return True
            except queue.Full:
                continue
        return False

    def run(self, session: requests.Session) -> None:
        _current.tracker = self.tracker
        resp = None
        try:
            http = self.http
            resp = session.request(http.method, http.url, data=http.body, headers=http.headers, stream=True,
                                   timeout=self.timeouts)
            self.response = resp
            self.tracker.headers = True
            if self.cancelled.is_set():
                return
            if resp.status_code >= 300:
                body = self._read_upto(resp, MAX_ERROR_BODY)
                self._put(HttpStatus(resp.status_code, dict(resp.headers), body))
                return
            if not self.whole:
                self._put(Opened())
            raw, total, limit, parts = resp.raw, 0, self.max_body_bytes, []
            while not self.cancelled.is_set():
                data = self._read(raw, READ_CHUNK)
                if not data:
                    self.tracker.sock = None
                    raw.release_conn()  # read to the end: the connection goes back to the pool
                    resp = None
                    self._put(WholeBody(b"".join(parts)) if self.whole else END)
                    return
                total += len(data)
                if total > limit:
                    self._put(Overflow(limit))
                    return
                if self.whole:
                    parts.append(data)
                elif self.on_data is None:
                    self._put(data)
                else:
                    taken = self.on_data(data)
                    if taken is False:
                        return
                    if taken is None:
                        self._put(data)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one event for the actor thread
            if not self.cancelled.is_set():
                self._put(TransportFailed(self.tracker.phase, _timed_out(exc), _names(exc)))
        finally:
            _current.tracker = None
            if resp is not None:
                resp.close()

    def _read(self, raw: Any, size: int) -> bytes:
        remaining = self.deadline - time.time()
        if remaining <= 0:
            raise _DeadlineReached()
        if remaining < self.timeouts[1] and self.tracker.sock is not None:
            self.tracker.sock.settimeout(remaining)  # so the last read ends at the deadline
        return raw.read1(size, decode_content=True)

    def _read_upto(self, resp: requests.Response, limit: int) -> bytes:
        parts, size = [], 0
        while size < limit and not self.cancelled.is_set():
            data = self._read(resp.raw, min(READ_CHUNK, limit - size))
            if not data:
                break
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    def stop(self) -> None:
        """End the attempt now: a blocked read returns at once, the connection is discarded."""
        self.cancelled.set()
        sock = self.tracker.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        resp = self.response
        if resp is not None:
            try:
                resp.close()
            except Exception:  # noqa: BLE001 - closing from another thread may race the reader
                pass
