"""The worker's network: one seam under its HTTP client and its stream channel.

httpx puts its seam at the transport (``Client(transport=...)``, ``BaseTransport.handle_request``,
``MockTransport(handler)`` for tests). Ours sits one level lower, at the connection, because
what the worker must get right lives in between: requests, urllib3 and http.client parse the
wire, and ``PhaseAdapter`` (``upstream.py``) records how far an attempt got (connected,
request written, headers back), which decides whether the provider saw it and so whether its
budget is refunded. A fake above that would skip it; a fake connection keeps all of it real.

A :class:`Transport` opens connections: ``connect(host, port, timeout)`` returns a connected
socket, or an object that behaves like one (``sendall``, ``recv_into``, ``makefile``,
``settimeout``, ``shutdown``, ``close``, ``fileno``, ``setsockopt``). A node uses
:class:`TcpTransport`; the unit tier installs ``actors.testing.mock_transport.MockTransport``,
an in-memory network whose upstreams answer through a handler, as httpx's does.

Thespian creates actors without arguments, so the transport is the process's: ``install()``
sets it (before the worker is created, in the unit tier's single process) and the worker
and its stream sender take it when they start. Nothing a message carries can choose it.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol

from urllib3.util import connection

__all__ = ["Transport", "TcpTransport", "install", "installed"]


class Transport(Protocol):
    def connect(self, host: str, port: int, timeout: float | None, *,
                source_address: tuple[str, int] | None = None,
                socket_options: Any = None) -> Any:
        """A connected socket (or a stand-in for one); raises OSError (``socket.timeout`` on a timeout)."""
        ...


class TcpTransport:
    """Real TCP, as urllib3 connects (its socket options: TCP_NODELAY)."""

    def connect(self, host: str, port: int, timeout: float | None, *,
                source_address: tuple[str, int] | None = None,
                socket_options: Any = None) -> socket.socket:
        if socket_options is None:
            socket_options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        return connection.create_connection((host, port), timeout, source_address=source_address,
                                            socket_options=socket_options)

    def __repr__(self) -> str:
        return "TcpTransport()"


_installed: Transport = TcpTransport()


def install(transport: Transport) -> Transport:
    """Make ``transport`` this process's (for workers started from now on); returns the previous one."""
    global _installed
    previous, _installed = _installed, transport
    return previous


def installed() -> Transport:
    return _installed
