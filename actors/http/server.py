"""Serving the front door with waitress, and draining it on SIGTERM.

Why waitress (measured in docs/http.md): the node's client side is synchronous (one
endpoint per thread), and waitress is a bounded pool of worker threads behind an
asynchronous reader. A request reaches a worker only once its headers and body are fully
read, so a slow or stalled client (slowloris) holds a connection slot, never a worker; body
and header sizes are bounded before the application runs; idle connections are closed after
``read_timeout_s``; and it tells a worker when its client has disconnected.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import waitress

from actors.client import GatewayClient
from actors.http.app import FrontDoor
from actors.settings.schema import HttpConfig

log = logging.getLogger("atomr.http")

__all__ = ["HttpServer", "waitress_options"]


def waitress_options(config: HttpConfig) -> dict[str, Any]:
    """The server's settings (also what bench/bench_http.py's floor path runs with)."""
    # The body limit is the application's (a 413 in the caller's dialect); waitress's, at
    # twice that, only stops bodies that announce no length from being buffered forever.
    return dict(threads=config.threads, connection_limit=config.connection_limit,
                max_request_body_size=2 * config.max_body_bytes, max_request_header_size=config.max_header_bytes,
                channel_timeout=config.read_timeout_s, cleanup_interval=max(1, min(30, int(config.read_timeout_s / 2))),
                channel_request_lookahead=1, ident="atomr", clear_untrusted_proxy_headers=True,
                expose_tracebacks=False, asyncore_use_poll=True, backlog=1024)


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
        bind_host, port = config.address
        self.server = waitress.create_server(self.app, host=bind_host, port=port, **waitress_options(config))
        self._draining = threading.Event()
        self._stopped = False

    @property
    def url(self) -> str:
        host = self.server.effective_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.server.effective_port}"

    def run(self, parent_pid: int | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or until ``parent_pid``, the launcher, is gone), then drain;
        a second signal stops at once."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        if parent_pid:
            threading.Thread(target=self._watch_parent, args=(parent_pid,), name="http-parent", daemon=True).start()
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
        self.server.trigger.pull_trigger(self._stop_accepting)
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
            self.server.socket.close()
        except OSError:
            pass
