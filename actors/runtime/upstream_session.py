"""A slot's requests session: connections that record how far an attempt got, and one request sent.

The connections come from the process's transport (``actors.runtime.transport``): real TCP
on a node, an in-memory network in the unit tier. Each records on the exchange of its thread
(``upstream.py``) whether it connected, wrote the request and got headers back: requests
folds all of those into ``ConnectionError``, and whether the provider has the request
(``sent``) depends on exactly that (``actors.core.transport``). The slots of a process share
one TLS context (``tls_context``): each would otherwise load the CA bundle (~1 MiB, ~50 ms)
per connection.
"""

from __future__ import annotations

import functools
import math
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

import requests
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.ssl_ import create_urllib3_context

from actors.core.transport import Phase
from actors.providers.base import HttpRequest
from actors.runtime import transport
from actors.runtime.transport import Transport

__all__ = ["PhaseAdapter", "http_session", "send", "tls_context"]

this_thread = threading.local()   # .tracker: the PhaseTracker of the exchange this slot thread runs
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


class PhaseTracker:
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
        tracker = getattr(this_thread, "tracker", None)
        if tracker is not None:
            tracker.connected, tracker.sock = True, self.sock

    def request(self, *args: Any, **kw: Any) -> None:
        tracker = getattr(this_thread, "tracker", None)
        if tracker is not None:
            with tracker.lock:
                if tracker.stopped:
                    raise _Stopped()
                if time.time() >= tracker.deadline:   # a slot thread ran late: paid for, nobody waiting
                    raise DeadlineReached()
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


def send(session: requests.Session, http: HttpRequest, timeouts: tuple[float, float]) -> requests.Response:
    """One request as written, through the session's adapter, its pooled connections and proxy.

    Not ``Session.request``: a session keeps the cookies an upstream sets and sends them on its
    next call, which on a slot is another caller's; and it follows redirects, sending the body
    (and, to the same host, the key) wherever a 3xx points. An upstream's 3xx is its answer
    here, like any other status. The session's default headers still go out. (Skipping the
    session's merging also saves about a fifth of the exchange's CPU.)"""
    request = requests.PreparedRequest()
    request.method = http.method.upper()
    request.url = _prepared_url(http.url)
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(session.headers)  # type: ignore[arg-type]
    headers.update(http.headers)
    request.headers = headers
    request.prepare_body(http.body, None)
    request.prepare_auth(None, request.url)
    adapter = session.get_adapter(request.url)
    return adapter.send(request, stream=True, timeout=timeouts, verify=True if session.verify is None else session.verify,
                        cert=session.cert, proxies=session.proxies)


@functools.lru_cache(maxsize=256)
def _prepared_url(url: str) -> str:
    """requests' checks and encoding of a URL (a deployment's endpoint: the same on every call)."""
    request = requests.PreparedRequest()
    request.prepare_url(url, None)
    assert request.url is not None, "prepare_url sets it or raises"
    return request.url


class DeadlineReached(Exception):
    """An exchange's deadline passed before its next read or its request went out."""


class _Stopped(Exception):
    """The exchange was stopped before its request went out: it never will."""


def http_session(endpoint: str, network: transport.Transport) -> requests.Session:
    http = requests.Session()
    adapter = PhaseAdapter(network, pool_connections=1, pool_maxsize=2, max_retries=0)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    # requests re-reads proxy variables and ~/.netrc on every call (milliseconds each here):
    # resolve the proxy for this endpoint once, honouring HTTPS_PROXY and NO_PROXY.
    http.proxies = requests.utils.get_environ_proxies(endpoint)
    http.trust_env = False
    return http
