"""Serving the front door with waitress, and draining it on SIGTERM.

Why waitress (measured in docs/http.md): the node's client side is synchronous (one
endpoint per thread), and waitress is a bounded pool of worker threads behind an
asynchronous reader. A request reaches a worker only once its headers and body are fully
read, so a slow or stalled client (slowloris) holds a connection slot, never a worker; body
and header sizes are bounded before the application runs; idle connections are closed after
``read_timeout_s``; and it tells a worker when its client has disconnected.

What waitress does not bound, :class:`GuardedServer` adds (docs/http.md, "Limits"): the time a
request's headers and then its body may take to arrive (a client sending a byte every few
seconds is never idle, so ``read_timeout_s`` never closes it; past the deadline: 408, closed),
and the connections one client address may hold open (past ``max_connections_per_client``:
429 at accept, closed), so one client cannot take every slot of ``connection_limit``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

import waitress  # noqa: F401 - the package; its parts below
from waitress.adjustments import Adjustments
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher, WSGITask

from actors.client import GatewayClient
from actors.core.log_limit import LineLimiter
from actors.http.app import WRITE_NOW, FrontDoor
from actors.settings.schema import HttpConfig

log = logging.getLogger("atomr.http")

__all__ = ["HttpServer", "GuardedServer", "GuardedTask", "SlowCaller", "waitress_options", "guarded_server",
           "RequestClock", "ClientSlots", "timeout_answer"]

ACCEPTS_PER_WAKE = 64     # connections taken from the backlog per readable listening socket


def waitress_options(config: HttpConfig) -> dict[str, Any]:
    """The server's settings (also what bench/bench_http.py's floor path runs with)."""
    # The body limit is the application's (a 413 in the caller's dialect); waitress's, at
    # twice that, only stops bodies that announce no length from being buffered forever.
    # Maintenance every second: it is also what enforces the header and body deadlines.
    return dict(threads=config.threads, connection_limit=config.connection_limit,
                max_request_body_size=2 * config.max_body_bytes, max_request_header_size=config.max_header_bytes,
                channel_timeout=config.read_timeout_s, cleanup_interval=1,
                channel_request_lookahead=1, ident="atomr", clear_untrusted_proxy_headers=True,
                expose_tracebacks=False, asyncore_use_poll=True, backlog=1024)


def _raw_error(status: str, kind: str, code: str, message: str, extra: str = "") -> bytes:
    """A whole response for a connection the application never sees (the dialect is not known yet)."""
    body = json.dumps({"error": {"message": message, "type": kind, "code": code, "param": None}}).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode() + body


# -- the guards' decisions (pure: the channel and the server below carry them out) -------------

class RequestClock:
    """When the request being read began, and when its headers were complete (unix seconds).

    ``received`` is told the channel's request before and after some bytes arrived (waitress's
    parser objects, or None between requests); ``overdue`` says which deadline is passed.
    """

    def __init__(self, accepted_at: float) -> None:
        self.request_started: float | None = accepted_at   # the first request: from the accept
        self.headers_at: float | None = None

    def received(self, now: float, before: Any, after: Any) -> None:
        if before is None and self.request_started is None:
            self.request_started = now       # the first byte of a request on a kept-alive connection
        if after is None:
            self.request_started = self.headers_at = None
            return
        if before is not None and after is not before:
            self.request_started, self.headers_at = now, None   # one ended and the next began
        if self.headers_at is None and after.headers_finished:
            self.headers_at = now

    def overdue(self, now: float, header_s: float, body_s: float) -> str | None:
        """"headers" or "body" when the request being read is past its deadline; None otherwise."""
        if self.request_started is None:
            return None      # idle between requests (read_timeout_s's)
        if self.headers_at is None:
            return "headers" if now - self.request_started > header_s else None
        return "body" if now - self.headers_at > body_s else None


def timeout_answer(what: str, host: str, limit: float) -> tuple[str, bytes]:
    """(the log line, the 408) for a request whose ``what`` ("headers" or "body") came too slowly."""
    field = "header_timeout_s" if what == "headers" else "body_timeout_s"
    return (f"closed a connection from {host}: its request's {what} did not all arrive within http.{field} "
            f"({limit:g}s); answered 408",
            _raw_error("408 Request Timeout", "timeout_error", "request_timeout",
                       f"the request's {what} did not all arrive within {limit:g}s"))


class ClientSlots:
    """Open connections per client address, and whether one more is allowed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.per_client: dict[str, int] = {}

    def held(self, host: str) -> int:
        return self.per_client.get(host, 0)

    def opened(self, host: str) -> None:
        self.per_client[host] = self.held(host) + 1

    def closed(self, host: str) -> None:
        left = self.held(host) - 1
        if left > 0:
            self.per_client[host] = left
        else:
            self.per_client.pop(host, None)

    def refusal(self, host: str) -> tuple[str, bytes] | None:
        """None when ``host`` may open one more; else (the log line, the 429)."""
        held = self.held(host)
        if held < self.limit:
            return None
        return (f"refused a connection from {host}: it has {held} open, http.max_connections_per_client "
                f"is {self.limit}; answered 429",
                _raw_error("429 Too Many Requests", "rate_limit_error", "too_many_connections",
                           f"this client already has {held} connections open (the limit is {self.limit}); "
                           f"reuse one, or close some", "Retry-After: 1\r\n"))


# -- the shell ------------------------------------------------------------------------------

class SlowCaller(ClientDisconnected):
    """The caller has not read what its stream was already sent, past the server's output bound."""


class GuardedTask(WSGITask):
    """waitress's WSGI task, offering the application ``environ["atomr.write_now"]`` (app.py).

    A streamed answer's chunks are written by the thread that receives them, not by the task's
    thread: the write must not block that thread, which serves every stream of the process. It
    never waits for the caller: past ``outbuf_high_watermark`` of unsent output (where waitress's
    own write would wait for the caller to read), the caller is too slow and the call ends
    (:class:`SlowCaller`, a ``ClientDisconnected``: the connection is closed).
    """

    def get_environment(self) -> Any:
        environ = super().get_environment()
        environ[WRITE_NOW] = self.write_now
        return environ

    def write(self, data: bytes) -> None:
        channel = self.channel
        if self.wrote_header or not data or not isinstance(channel, GuardedChannel):
            return super().write(data)
        # waitress writes the head on its own, so a response's head and its first body bytes would
        # go in two sends; each send in this process is a hand-over of the GIL when it is busy.
        channel.hold_writes()
        try:
            super().write(data)
        finally:
            channel.release_writes()

    def write_now(self, data: bytes) -> None:
        """Body bytes, framed as the response is (chunked or not), sent as far as the socket takes them now."""
        if not data:
            return
        unsent = self.channel.total_outbufs_len
        if unsent > self.channel.adj.outbuf_high_watermark:
            raise SlowCaller(f"the caller has {unsent} bytes of its answer unread")
        self.write(data)


class GuardedChannel(HTTPChannel):
    """A waitress channel that knows when its current request began and when its headers were complete."""

    server: GuardedServer
    task_class = GuardedTask

    def __init__(self, server: "GuardedServer", sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map=map)
        self.client_host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        self.clock = RequestClock(self.creation_time)
        self._counted = True
        self._held: list[bytes] | None = None   # writes kept to go as one (GuardedTask.write)
        server.slots.opened(self.client_host)

    def write_soon(self, data: Any) -> int:
        held = self._held
        if held is not None:
            held.append(data)
            return len(data)
        return int(super().write_soon(data))

    def hold_writes(self) -> None:
        """Keep what is written until :meth:`release_writes`, then send it as one write."""
        self._held = []

    def release_writes(self) -> None:
        held, self._held = self._held, None
        if held:
            super().write_soon(b"".join(held))

    def received(self, data: bytes) -> bool:
        now = time.time()
        before = self.request
        result = super().received(data)
        self.clock.received(now, before, self.request)
        return result

    def overdue(self, now: float, header_s: float, body_s: float) -> str | None:
        if self.requests or self.will_close or self.close_when_flushed:
            return None      # being served, or closing
        return self.clock.overdue(now, header_s, body_s)

    def answer_and_close(self, payload: bytes) -> None:
        """From the I/O thread, with no request being served: write ``payload``, then close."""
        self.request = None
        with self.outbuf_lock:
            self.outbufs[-1].append(payload)
            self.current_outbuf_count += len(payload)
            self.total_outbufs_len += len(payload)
        self.close_when_flushed = True

    def del_channel(self, map: Any = None) -> None:
        super().del_channel(map)
        if self._counted:
            self._counted = False
            self.server.slots.closed(self.client_host)


class GuardedServer(TcpWSGIServer):
    """waitress's TCP server, with a cap per client address and deadlines for headers and body."""

    channel_class = GuardedChannel

    def __init__(self, application: Any, config: HttpConfig, *, host: str, port: int,
                 emit: Any = log.warning) -> None:
        adj = Adjustments(host=host, port=port, **waitress_options(config))
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(adj.threads)
        self.config = config
        self.slots = ClientSlots(config.max_connections_per_client)
        self.notes = LineLimiter(emit)
        self.refused_connections = 0   # over max_connections_per_client
        self.timed_out = 0             # headers or body past their deadline
        # types-waitress has Adjustments.listen as list[str]: it holds (family, type, proto, sockaddr) tuples.
        super().__init__(application, map={}, dispatcher=dispatcher, adj=adj,
                         sockinfo=adj.listen[0])  # type: ignore[arg-type]

    def handle_accept(self) -> None:
        # Several per wake-up: a backlog of a thousand slow connections is taken (and refused) quickly.
        channels = self._map  # type: ignore[attr-defined]  # wasyncore's (set in its __init__; not in types-waitress)
        for _ in range(ACCEPTS_PER_WAKE):
            if len(channels) >= self.adj.connection_limit:
                return
            try:
                accepted = self.accept()
                if accepted is None:
                    return
                conn, addr = accepted
                self.set_socket_options(conn)
            except OSError:
                return
            addr = self.fix_addr(addr)
            host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
            refusal = self.slots.refusal(host)
            if refusal is not None:
                self._refuse(conn, host, *refusal)
                continue
            self.channel_class(self, conn, addr, self.adj, map=channels)

    def _refuse(self, conn: socket.socket, host: str, note: str, payload: bytes) -> None:
        self.refused_connections += 1
        self.notes.note(host, "connections per client", note)
        try:
            conn.setblocking(False)
            conn.send(payload)              # a few hundred bytes: the socket's buffer takes them at once
            conn.shutdown(socket.SHUT_WR)
            for _ in range(4):              # what it sent already: read, so the close is a FIN, not a reset
                if not conn.recv(65536):
                    break
        except OSError:
            pass
        finally:
            conn.close()

    def maintenance(self, now: float) -> None:
        # types-waitress has now: int and active_channels: HTTPChannel; waitress passes time.time() and
        # keeps a dict of channels.
        super().maintenance(now)  # type: ignore[arg-type]   # idle between requests: read_timeout_s
        header_s, body_s = self.config.header_timeout_s, self.config.body_timeout_s
        for channel in list(self.active_channels.values()):  # type: ignore[attr-defined]
            overdue = channel.overdue(now, header_s, body_s) if isinstance(channel, GuardedChannel) else None
            if overdue is None:
                continue
            self.timed_out += 1
            note, payload = timeout_answer(overdue, channel.client_host, header_s if overdue == "headers" else body_s)
            self.notes.note(channel.client_host, f"{overdue} timeout", note)
            channel.answer_and_close(payload)


def guarded_server(application: Any, config: HttpConfig) -> GuardedServer:
    """The front door's server for ``config`` (also what bench/bench_http.py's floor path runs)."""
    if config.address is None:
        raise ValueError("http.listen: the HTTP listener needs an address, got none")
    host, port = config.address
    return GuardedServer(application, config, host=host, port=port)


class HttpServer:
    """A waitress server running a FrontDoor for the node on ``admin_port``."""

    def __init__(self, config: HttpConfig, admin_port: int, models: list[str], *, listen: str | None = None,
                 host: str = "127.0.0.1", upstreams: dict[str, str] | None = None) -> None:
        if listen is not None:
            config = config.with_listen(listen)
        if config.address is None:
            raise ValueError("http.listen: the HTTP listener needs an address, got none")
        self.config = config
        self.client = GatewayClient(admin_port, host=host, timeout_s=config.request_timeout_s)
        self.app = FrontDoor(config, self.client, models, upstreams=upstreams)
        self.server = guarded_server(self.app, config)
        self._draining = threading.Event()
        self._stopped = False

    @property
    def url(self) -> str:
        # BaseWSGIServer.__init__ sets both (from the bound socket); types-waitress does not declare them.
        host: str = self.server.effective_host  # type: ignore[attr-defined]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.server.effective_port}"  # type: ignore[attr-defined]

    def run(self, parent_pid: int | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or until ``parent_pid``, the launcher, is gone), then drain;
        a second signal stops at once."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        if parent_pid:
            threading.Thread(target=self._watch_parent, args=(parent_pid,), name="http-parent", daemon=True).start()
        # What start-up made (modules, the app, the client) lives as long as the process: out of the
        # collector's way, so a full collection under load walks only what serving made.
        gc.freeze()
        try:
            self.server.run()
        except KeyboardInterrupt:
            pass
        finally:
            self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
            self.app.close()
            self.client.close()

    def _watch_parent(self, parent_pid: int) -> None:
        # A launcher that died without stopping us must not leave a listener behind.
        while not self._draining.is_set():
            if os.getppid() != parent_pid:
                log.warning("the launcher (pid %d) is gone: draining and exiting", parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(1.0)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stopped or self._draining.is_set():
            raise KeyboardInterrupt  # leaves server.run() in the main thread
        self._draining.set()
        threading.Thread(target=self._drain, name="http-drain", daemon=True).start()

    def _drain(self) -> None:
        """Stop accepting, let calls in flight finish for up to drain_timeout_s, cancel the rest, exit."""
        app = self.app
        app.draining = True
        # types-waitress has trigger: int; it is waitress.trigger.trigger, whose pull_trigger takes a thunk.
        self.server.trigger.pull_trigger(self._stop_accepting)  # type: ignore[attr-defined]
        deadline = time.monotonic() + self.config.drain_timeout_s
        log.info("draining: %d request(s) in flight, up to %.0fs", app.in_flight, self.config.drain_timeout_s)
        while app.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if app.in_flight > 0:
            log.warning("drain timeout: cancelling %d request(s) still in flight", app.in_flight)
            app.watcher.cancel_all()
            end = time.monotonic() + 5
            while app.in_flight > 0 and time.monotonic() < end:
                time.sleep(0.05)
        # Let the last bytes leave before the loop stops.
        time.sleep(0.2)
        self._stopped = True
        os.kill(os.getpid(), signal.SIGINT)

    def _stop_accepting(self) -> None:
        # Runs in waitress's I/O loop (via its trigger): the only thread that may touch its sockets.
        try:
            self.server.accepting = False
            self.server.del_channel()
            listening = self.server.socket
            if listening is not None:   # (a listening server has one until this closes it)
                listening.close()
        except OSError:
            pass
