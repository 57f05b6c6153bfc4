"""The unit tier: pure modules and actors on Thespian's in-process simpleSystemBase.

Nothing here may open a socket: a test that tries fails at once, so this tier stays fast
and independent of the machine's network and timing.
"""

from __future__ import annotations

import socket

import pytest


class SocketUsed(AssertionError):
    pass


def _refuse(*_args, **_kw):
    raise SocketUsed("the unit tier opens no sockets: move this test to tests/process/")


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch):
    for name in ("connect", "connect_ex", "bind", "listen", "sendto"):
        monkeypatch.setattr(socket.socket, name, _refuse)
    yield
