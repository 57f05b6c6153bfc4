"""A listening socket in memory, for the stream receiver in the unit tier: connections are pipes.

``PipeListener()`` is what ``StreamReceiver(keyring, listener=...)`` accepts from;
``listener.connect()`` is a worker connecting to it and hands back the writing end
(``sendall``, ``close``). Everything is a file descriptor (``selectors`` waits on them as on
sockets): the listener is readable while a connection waits to be accepted; a connection is
readable when bytes arrive, and reads ``b""`` once its writer closed. No socket opens.
"""

from __future__ import annotations

import os
import threading
from collections import deque

__all__ = ["PipeListener", "PipeConnection", "PipeClient"]


class PipeConnection:
    """The receiver's end of one connection (a pipe's reading end), non-blocking like its sockets."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    def setblocking(self, flag: bool) -> None:
        os.set_blocking(self._fd, flag)

    def recv(self, size: int) -> bytes:
        return os.read(self._fd, size)   # BlockingIOError when empty, b"" at the writer's close

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)


class PipeClient:
    """The worker's end of one connection (a pipe's writing end)."""

    def __init__(self, fd: int, peer: PipeConnection) -> None:
        self._fd = fd
        self.peer = peer        # the receiver's end: ``peer.closed`` once the receiver dropped it
        self.closed = False

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]   # BrokenPipeError once the receiver closed its end

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)


class PipeListener:
    """Connections wait in a backlog until accepted; ``accept`` raises BlockingIOError when none does."""

    def __init__(self, port: int = 47100) -> None:
        self.port = port
        self._ready, self._ready_write = os.pipe()   # one byte per connection waiting
        os.set_blocking(self._ready, False)
        self._backlog: deque[PipeConnection] = deque()
        self._lock = threading.Lock()
        self.closed = False
        self.accepted = 0

    def fileno(self) -> int:
        return self._ready

    def getsockname(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def connect(self) -> PipeClient:
        read, write = os.pipe()
        server = PipeConnection(read)
        with self._lock:
            if self.closed:
                os.close(read)
                os.close(write)
                raise ConnectionRefusedError(111, "Connection refused")
            self._backlog.append(server)
            os.write(self._ready_write, b"\0")
        return PipeClient(write, server)

    @property
    def waiting(self) -> int:
        """Connections in the backlog, not accepted yet."""
        with self._lock:
            return len(self._backlog)

    def accept(self) -> tuple[PipeConnection, tuple[str, int]]:
        with self._lock:
            if not self._backlog:
                raise BlockingIOError(11, "no connection waiting")
            os.read(self._ready, 1)
            self.accepted += 1
            return self._backlog.popleft(), ("127.0.0.1", 0)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            backlog, self._backlog = list(self._backlog), deque()
            os.close(self._ready)
            os.close(self._ready_write)
        for connection in backlog:
            connection.close()
