"""A worker process's one reader of streamed bodies: the chunks of all its slots, read by one thread.

With each slot's thread blocked in a read of its own body, every chunk woke a different thread,
and the threads of a process handed the GIL to one another: ~17 futex calls and one or two
polls per relayed chunk in a worker process at K=256 (docs/performance.md, round 9). Here one thread
waits on every streamed body's socket at once (epoll), reads what arrived and hands each
payload to its attempt's sink (``Delivery.take``), which writes the chunk to its channel.

The slot's thread still owns its exchange. Once the headers are read it hands the body over
(:meth:`BodyPoller.pump`) and waits; what ended the body (its end, a failure, a timeout, an
overflow, a stop) comes back to it, and it reports that to the sink as it would for a body it
read itself (``upstream.py``). Only streamed, chunked bodies on real sockets come here; the
unit tier's in-memory connections are read by their slot's thread.

The poller never blocks on one body: its sockets are non-blocking while it holds them, and the
stream channel never waits for a slow consumer on its thread (``stream_sender.py``).
"""

from __future__ import annotations

import math
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Protocol

from actors.runtime import stream_sender
from actors.runtime.upstream_session import DeadlineReached

__all__ = ["BodyPoller", "Chunked", "poller", "ENDED", "STOPPED", "OVERFLOWED"]

ENDED, STOPPED, OVERFLOWED = "ended", "stopped", "overflowed"
READ_BYTES = 64 * 1024
ALIVE_CHECK_S = 1.0     # how often a waiting slot checks that the poller's thread still runs


class Chunked(Protocol):
    """A chunked body's decoding (``core/chunked.ChunkedDecoder``): payload out of wire bytes."""

    @property
    def done(self) -> bool: ...

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> None: ...


class _Body:
    __slots__ = ("sock", "chunked", "sink", "limit", "total", "read_s", "deadline", "deadline_mono",
                 "due", "cancelled", "ended", "outcome", "error")

    def __init__(self, sock: socket.socket, chunked: Chunked, sink: Callable[[bytes], bool], limit: int,
                 read_s: float, deadline: float, cancelled: threading.Event) -> None:
        self.sock, self.chunked, self.sink = sock, chunked, sink
        self.limit, self.total = limit, 0
        self.read_s, self.deadline = read_s, deadline
        self.deadline_mono = time.monotonic() + (deadline - time.time())
        self.due = min(time.monotonic() + read_s, self.deadline_mono)
        self.cancelled = cancelled
        self.ended = threading.Event()
        self.outcome: str | None = None
        self.error: BaseException | None = None

    def read(self) -> bool:
        """Read what has arrived; True once the body is over (``outcome`` or ``error`` says how)."""
        try:
            while True:
                if self.cancelled.is_set():
                    return self._over(STOPPED)
                if time.time() >= self.deadline:
                    return self._over(error=DeadlineReached())
                try:
                    data = self.sock.recv(READ_BYTES)
                except (BlockingIOError, ssl.SSLWantReadError, InterruptedError):
                    return False
                if not data:
                    self.chunked.finish()   # raises unless the last chunk had come
                    return self._over(ENDED)
                if self.take(data):
                    return True
                # A TLS record may hold more than one read returned: the socket would not say so.
                if not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
                    return False
        except BaseException as exc:  # noqa: BLE001 - the slot's thread classifies it (upstream._timed_out, _names)
            return self._over(error=exc)

    def take(self, data: bytes) -> bool:
        """Wire bytes in; True once the body is over."""
        self.due = min(time.monotonic() + self.read_s, self.deadline_mono)
        payload = self.chunked.feed(data)
        if payload:
            self.total += len(payload)
            if self.total > self.limit:
                return self._over(OVERFLOWED)
            if self.cancelled.is_set() or not self.sink(payload):
                return self._over(STOPPED)
        return self._over(ENDED) if self.chunked.done else False

    def expire(self) -> None:
        self._over(error=DeadlineReached() if time.time() >= self.deadline else socket.timeout("timed out"))

    def _over(self, outcome: str | None = None, error: BaseException | None = None) -> bool:
        self.outcome, self.error = outcome, error
        return True


class BodyPoller:
    """One thread reading the streamed bodies handed to it; :meth:`pump` from a slot's thread."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._added: list[_Body] = []
        self._bodies: set[_Body] = set()
        self._next_check = math.inf
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="body-poller", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def pump(self, sock: socket.socket, buffered: bytes, chunked: Chunked, sink: Callable[[bytes], bool],
             limit: int, read_s: float, deadline: float, cancelled: threading.Event) -> str:
        """Read the body on the poller's thread until it is over. ``sock`` is non-blocking until
        this returns; ``buffered`` is what was read with the headers. Returns ENDED, STOPPED or
        OVERFLOWED (``limit`` payload bytes passed); raises what ended it otherwise."""
        body = _Body(sock, chunked, sink, limit, read_s, deadline, cancelled)
        if not (buffered and body.take(buffered)):
            self._add(body)
            while not body.ended.wait(ALIVE_CHECK_S):
                if not self.alive:
                    raise RuntimeError("the body poller's thread ended") from self.failure
        if body.error is not None:
            raise body.error
        assert body.outcome is not None, "a body is over with an outcome or an error"
        return body.outcome

    def _add(self, body: _Body) -> None:
        with self._lock:
            if not self.alive:
                raise RuntimeError("the body poller's thread ended") from self.failure
            self._added.append(body)
        try:
            os.write(self._wake_write, b"\0")
        except BlockingIOError:
            pass   # the pipe is full: the poller has a wake-up coming already

    # -- the poller's thread ---------------------------------------------------------------

    def _run(self) -> None:
        out = stream_sender.sender()
        if out is not None:
            out.own_connections()   # never queued behind the actor thread's write of a first chunk
        try:
            while True:
                wait = None if self._next_check == math.inf else max(0.0, self._next_check - time.monotonic())
                for key, _ in self._selector.select(wait):
                    if key.data is None:
                        self._take_added()
                    elif key.data.read():
                        self._end(key.data)
                if time.monotonic() >= self._next_check:
                    self._expire()
        except BaseException as exc:  # noqa: BLE001 - a bug here must not leave a slot waiting forever
            self.failure = exc
            with self._lock:
                waiting = list(self._bodies) + self._added
            for body in waiting:
                body.error = body.error or RuntimeError("the body poller's thread ended")
                body.ended.set()

    def _take_added(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            added, self._added = self._added, []
        for body in added:
            try:
                self._selector.register(body.sock, selectors.EVENT_READ, body)
            except (OSError, ValueError) as exc:   # its socket is gone already
                body.error = exc
                body.ended.set()
                continue
            self._bodies.add(body)
            self._next_check = min(self._next_check, body.due)
            if body.read():   # what came between the slot's last read and now
                self._end(body)

    def _expire(self) -> None:
        now = time.monotonic()
        for body in [b for b in self._bodies if b.due <= now]:
            body.expire()
            self._end(body)
        self._next_check = min((b.due for b in self._bodies), default=math.inf)

    def _end(self, body: _Body) -> None:
        """The body is over: the poller lets go of its socket, then its slot goes on."""
        self._selector.unregister(body.sock)
        self._bodies.discard(body)
        body.ended.set()


_poller: BodyPoller | None = None
_poller_lock = threading.Lock()


def poller() -> BodyPoller:
    """This process's poller, started on first use (and again if its thread ended)."""
    global _poller
    with _poller_lock:
        if _poller is None or not _poller.alive:
            _poller = BodyPoller()
        return _poller


def _forget_after_fork() -> None:
    global _poller, _poller_lock
    _poller, _poller_lock = None, threading.Lock()   # the parent's thread did not come along


os.register_at_fork(after_in_child=_forget_after_fork)
