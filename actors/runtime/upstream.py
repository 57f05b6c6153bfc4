"""One HTTP attempt (an exchange) on its slot's thread: the phase it reached, bounded reads, prompt stops.

A slot's thread (``slot.py``) runs the exchange and hands every outcome to a sink as a reader
event (``actors.core.streaming``); it never touches Thespian (sends from another thread are lost).

Where an attempt failed is recorded by the connection itself (connected, request written,
headers received): requests folds all of those into ``ConnectionError``, and whether the
provider has the request (``sent``) depends on exactly that (``actors.core.transport``).
The connections come from the process's transport (``actors.runtime.transport``): real TCP
on a node, an in-memory network in the unit tier, the same phase tracking on both.

Reads catch up (``response_body.py``). The slots of a process share one TLS context
(``tls_context``): each would otherwise load the CA bundle (~1 MiB, ~50 ms) per connection.
"""

from __future__ import annotations

import math
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.ssl_ import create_urllib3_context

from actors.core.streaming import END, HttpStatus, Opened, Overflow, ReaderEvent, TransportFailed, WholeBody
from actors.core.transport import Phase
from actors.providers.base import HttpRequest
from actors.runtime.response_body import Urllib3Body, body_reader
from actors.runtime.transport import Transport

__all__ = ["HttpExchange", "PhaseAdapter", "READ_CHUNK", "MAX_ERROR_BODY", "tls_context"]

READ_CHUNK = MAX_ERROR_BODY = 64 * 1024   # one read's most (whatever has arrived, so no token is held back)

_current = threading.local()
_tls: ssl.SSLContext | None = None
_tls_lock = threading.Lock()
if TYPE_CHECKING:   # the checker sees _Tracked as the connection it is mixed into; its real base is object
    _Connection = HTTPConnection
else:
    _Connection = object


def tls_context() -> ssl.SSLContext:
    """This process's one context for verified HTTPS (requests' CA bundle), made on first use.

    requests hands urllib3 the bundle's path, and urllib3 makes a context and loads the bundle
    for every new connection; a process of a few hundred slots would hold a few hundred copies."""
    global _tls
    with _tls_lock:
        if _tls is None:
            context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
            context.load_verify_locations(DEFAULT_CA_BUNDLE_PATH)
            _tls = context
        return _tls


class _Tracker:
    __slots__ = ("connected", "writing", "written", "headers", "sock", "stopped", "lock", "deadline")

    def __init__(self, deadline: float = math.inf) -> None:
        self.connected = self.writing = self.written = self.headers = self.stopped = False
        self.sock: socket.socket | None = None
        self.deadline = deadline   # unix time: a request not on the wire by then never goes out
        # Stopping and starting to write exclude each other: once stop() returns, no request
        # starts on the wire, so an attempt reported unsent (and refunded) never reaches the provider.
        self.lock = threading.Lock()

    @property
    def phase(self) -> Phase:
        if self.headers:
            return Phase.BODY
        if self.written:
            return Phase.AWAIT_HEADERS
        return Phase.SEND if self.connected else Phase.CONNECT


class _Tracked(_Connection):
    """Mixed into urllib3's connections: opens them through the transport, and tells the
    exchange on this thread how far it got."""

    transport: Transport   # set on the per-adapter subclass (_pool_classes)

    def _new_conn(self) -> Any:
        # urllib3's own, with the transport in place of socket.create_connection.
        try:
            return self.transport.connect(self._dns_host, self.port, self.timeout,
                                          source_address=self.source_address,
                                          socket_options=self.socket_options)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except socket.timeout as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                      f"(connect timeout={self.timeout})") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc

    def connect(self) -> None:
        if isinstance(self, HTTPSConnection) and getattr(self.transport, "terminates_tls", False):
            # An in-memory transport (the unit tier's) is the far end itself: no TLS inside it.
            HTTPConnection.connect(self)
            self.is_verified = True
        else:
            super().connect()
        tracker = getattr(_current, "tracker", None)
        if tracker is not None:
            tracker.connected, tracker.sock = True, self.sock

    def request(self, *args: Any, **kw: Any) -> None:
        tracker = getattr(_current, "tracker", None)
        if tracker is not None:
            with tracker.lock:
                if tracker.stopped:
                    raise _Stopped()
                if time.time() >= tracker.deadline:   # a slot thread ran late: paid for, nobody waiting
                    raise _DeadlineReached()
                tracker.writing = True
                if self.sock is not None:  # a kept-alive connection
                    tracker.connected, tracker.sock = True, self.sock
        try:
            super().request(*args, **kw)
        except BaseException:
            if tracker is not None:
                with tracker.lock:   # the write failed (a stop that cut it short has counted it already)
                    tracker.writing = False
            raise
        if tracker is not None:
            tracker.written = True


def _pool_classes(transport: Transport) -> dict[str, type]:
    """urllib3 pool classes whose connections go through ``transport`` and track their phase."""
    http = type("TrackedHTTPConnection", (_Tracked, HTTPConnection), {"transport": transport})
    https = type("TrackedHTTPSConnection", (_Tracked, HTTPSConnection), {"transport": transport})
    return {"http": type("TrackedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("TrackedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https})}


class PhaseAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose connections come from ``transport`` and record the phase an attempt reached."""

    def __init__(self, transport: Transport, **kw: Any) -> None:
        self.pools = _pool_classes(transport)
        super().__init__(**kw)

    def init_poolmanager(self, *args: Any, **kw: Any) -> None:
        super().init_poolmanager(*args, **kw)
        self.poolmanager.pool_classes_by_scheme = dict(self.pools)

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if _shared_tls(host_params.get("scheme"), verify, cert):
            pool_kwargs["ssl_context"] = tls_context()
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        if _shared_tls(url.split(":", 1)[0].lower(), verify, cert):
            conn.ca_certs = conn.ca_cert_dir = None  # in the shared context already: not loaded again per connection

    def proxy_manager_for(self, proxy: str, **kw: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kw)
        manager.pool_classes_by_scheme = dict(self.pools)
        return manager


def _shared_tls(scheme: Any, verify: Any, cert: Any) -> bool:
    return scheme == "https" and verify is True and cert is None


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


class _DeadlineReached(Exception):
    pass


class _Stopped(Exception):
    """The exchange was stopped before its request went out: it never will."""


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
        self.tracker = _Tracker(deadline)
        self.cancelled = threading.Event()

    @property
    def phase(self) -> Phase:
        return self.tracker.phase

    def run(self, session: requests.Session, sink: Sink) -> None:
        if self.cancelled.is_set():
            return  # ended (deadline, cancel) before its slot took it: nothing goes out
        _current.tracker = self.tracker
        resp = None
        try:
            http = self.http
            resp = session.request(http.method, http.url, data=http.body, headers=http.headers, stream=True,
                                   timeout=self.timeouts)
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
            _current.tracker = None
            if resp is not None:
                resp.close()

    def _read(self, read: Callable[[int], bytes], size: int) -> bytes:
        remaining = self.deadline - time.time()
        if remaining <= 0:
            raise _DeadlineReached()
        if remaining < self.timeouts[1] and self.tracker.sock is not None:
            self.tracker.sock.settimeout(remaining)  # so the last read ends at the deadline
        return read(size)

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
