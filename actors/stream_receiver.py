"""The caller's end of the stream channel: one loopback listener per process, one thread.

Workers connect here and write each chunk of the streams this process asked for as a
signed frame (``actors/core/frames.py``; the sender is ``actors/runtime/stream_sender.py``).
The thread checks each connection's first frame (it must carry this process's token, signed
with a key of the wire's ring), files every chunk in the :class:`Inbox` of the thread whose
request it belongs to, and wakes that thread through its inbox's pipe: the thread is blocked
in its Thespian endpoint, which watches the pipe (``thespian_hooks.listen_or_watch``), so a
chunk and a terminal message wake it alike. A chunk for a request nobody waits for is dropped.
A request's chunks may be pushed to any :class:`ChunkTarget` instead of its thread's inbox: a
stream whose consumer takes its chunks as they come (``Stream.push_to``) is handed them by this
thread, and its waiting thread is not woken per chunk. The thread also reads this process's
links to its engines (``actors/caller_links.py``), and files each terminal that comes on them
in the inbox of the thread that waits for it (:meth:`StreamReceiver.file`).

The listener is the receiver's seam: a loopback socket by default; anything socket-like
(``accept``, ``getsockname``, ``fileno``, ``close``, connections with ``recv``) otherwise, as the
unit tier's in-memory listener (``actors/testing/pipe_listener.py``), whose connections are pipes.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import selectors
import threading
import time
from collections import deque
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Protocol

from actors.core.frames import (
    FrameCodec,
    FrameDecoder,
    FrameRefused,
    chunk_fields,
    loopback_listener,
)
from actors.types import Completed, Failed, TokenChunk

__all__ = ["ChunkTarget", "Inbox", "Nudge", "StreamReceiver", "shared_receiver"]

log = logging.getLogger("atomr.client")

READ_BYTES = 256 * 1024
PIPE_READ_BYTES = 1 << 16   # an inbox's pipe holds its wake-ups, one byte each
HELLO_BYTES = 512    # a connection's first frame: the greeting (key id, token, MAC)
# A worker greets at once; a connection that has not within this long is closed. Without it an
# unauthenticated connection announcing a greeting and falling silent held a slot forever.
HELLO_TIMEOUT_S = 5.0
# Past this many worker connections the listener stops accepting until one closes. A worker's
# connection is never accepted and then closed unread: its chunks would be lost, not resent.
MAX_CONNECTIONS = 4096


class ChunkTarget(Protocol):
    """Where the receiver files a request's chunks (from its thread): an :class:`Inbox`, or a stream's push."""

    def put(self, chunk: TokenChunk) -> None: ...


@dataclass(frozen=True, slots=True)
class Nudge:
    """Wakes the thread waiting for ``request_id`` with nothing to read: something it waits on changed."""

    request_id: str


Arrival = TokenChunk | Nudge | Completed | Failed


class Inbox:
    """One client thread's chunks (and terminals from its engine links), and the pipe that wakes it."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._chunks: deque[Arrival] = deque()
        # A put racing the close must not write to the closed descriptor's number: by then it may
        # be another file's.
        self._lock = threading.Lock()
        self.closed = False

    def fileno(self) -> int:
        return self._read

    def put(self, chunk: Arrival) -> None:
        """From any thread but its owner."""
        self._chunks.append(chunk)
        with self._lock:
            if self.closed:
                return
            try:
                os.write(self._write, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: its reader is awake already

    def drain(self) -> list[Arrival]:
        """From the owning thread once its pipe woke it: the wake-ups, then what arrived."""
        try:
            # One read takes every pending byte (a pipe holds 64 KiB by default; a put
            # that finds it full skips its byte, so the pipe never holds more than it can take).
            while len(os.read(self._read, PIPE_READ_BYTES)) == PIPE_READ_BYTES:
                pass
        except (BlockingIOError, OSError):
            pass
        return self.take()

    def take(self) -> list[Arrival]:
        """From the owning thread: what arrived, without a system call. Wake-ups for what it
        takes stay in the pipe, so the next wait returns at once and drains them."""
        out = []
        while self._chunks:
            out.append(self._chunks.popleft())
        return out

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self._read)
                os.close(self._write)


class _Connection:
    __slots__ = ("decoder", "greeted", "greet_by", "open")

    def __init__(self, codec: FrameCodec, greet_by: float) -> None:
        self.decoder = FrameDecoder(codec, first_frame_bytes=HELLO_BYTES)
        self.greeted = False
        self.greet_by = greet_by
        self.open = True


class StreamReceiver:
    """``StreamReceiver(keyring)``: listens on a loopback port (``listener``: another listener) and runs its thread."""

    def __init__(self, keyring: Any, hello_timeout_s: float = HELLO_TIMEOUT_S, *, listener: Any = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.codec = FrameCodec(keyring)
        self.token = secrets.token_hex(16)
        self._listener = listener if listener is not None else loopback_listener()
        self.port = self._listener.getsockname()[1]
        self.max_connections = max_connections
        self.spec = {"port": self.port, "token": self.token}
        self._routes: dict[str, Inbox] = {}            # request id -> the inbox of the thread waiting for it
        self._pushes: dict[str, ChunkTarget] = {}      # request id -> where its chunks go instead (push_to)
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._stop_read, self._stop_write = os.pipe()
        self._stopped = False
        self._selector.register(self._stop_read, selectors.EVENT_READ, "stop")
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        self._to_watch: deque[tuple[Any, Callable[[], bool]]] = deque()
        self.paused = False       # at max_connections: not accepting (new connections wait in the backlog)
        self.refused = 0          # connections dropped for a bad frame, key or token
        self.timed_out = 0        # connections dropped for not greeting within hello_timeout_s
        self.delivered = 0        # chunks handed to their request's target
        self.connections = 0
        self.hello_timeout_s = hello_timeout_s
        self._greeting: deque[tuple[Any, _Connection]] = deque()   # by deadline (accept order)
        self._thread = threading.Thread(target=self._run, name="atomr-stream-receiver", daemon=True)
        self._thread.start()

    def route(self, request_id: str, inbox: Inbox) -> None:
        """File what comes for ``request_id`` in ``inbox`` (its chunks, until they are pushed)."""
        with self._lock:
            self._routes[request_id] = inbox

    def push(self, request_id: str, target: ChunkTarget) -> None:
        """Hand ``request_id``'s chunks to ``target`` from now on; anything else still goes to its inbox."""
        with self._lock:
            self._pushes[request_id] = target

    def unroute(self, request_id: str) -> None:
        with self._lock:
            self._routes.pop(request_id, None)
            self._pushes.pop(request_id, None)

    def file(self, message: Arrival) -> None:
        """From this thread: a message for a request that came beside the channel (a terminal on a link)."""
        request_id = message.request_id
        with self._lock:
            target: ChunkTarget | Inbox | None = self._routes.get(request_id)
            if isinstance(message, TokenChunk):
                target = self._pushes.get(request_id, target)
        if target is not None:
            target.put(message)  # type: ignore[arg-type]   # a push takes chunks only; it gets nothing else

    def watch(self, conn: Any, on_readable: Callable[[], bool]) -> None:
        """Have this thread call ``on_readable()`` whenever ``conn`` is readable, until it returns False."""
        with self._lock:
            if self._stopped:
                return
            self._to_watch.append((conn, on_readable))
        os.write(self._wake_write, b"\0")

    def close(self) -> None:
        """Stop the thread; every connection and the listener are closed with it."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        os.write(self._stop_write, b"\0")
        self._thread.join(timeout=2)
        if not self._thread.is_alive():
            for fd in (self._stop_read, self._stop_write, self._wake_read, self._wake_write):
                os.close(fd)

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                wait = (max(0.0, self._greeting[0][1].greet_by - time.monotonic()) + 0.01) if self._greeting else None
                for key, _ in self._selector.select(wait):
                    if key.data == "stop":
                        return
                    if key.data == "wake":
                        self._start_watching()
                    elif key.data is None:
                        self._accept()
                    elif callable(key.data):
                        self._call(key.fileobj, key.data)
                    else:
                        self._read(key.fileobj, key.data)
                self._expire(time.monotonic())
        except Exception:  # noqa: BLE001 - logged; streams then fall back to waiting on the terminal
            log.exception("the stream receiver stopped")
        finally:
            for key in list(self._selector.get_map().values()):
                if isinstance(key.data, _Connection):
                    conn: Any = key.fileobj
                    conn.close()
            self._listener.close()
            self._selector.close()

    def _call(self, conn: Any, on_readable: Callable[[], bool]) -> None:
        try:
            watching = on_readable()
        except Exception:  # noqa: BLE001 - one link's bug must not stop every stream of the process
            log.exception("stream receiver: reading a watched connection failed; it is no longer read")
            watching = False
        if not watching:
            self._selector.unregister(conn)

    def _start_watching(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            added, self._to_watch = list(self._to_watch), deque()
        for conn, on_readable in added:
            try:
                self._selector.register(conn, selectors.EVENT_READ, on_readable)
            except (ValueError, KeyError, OSError):
                pass   # closed already, or watched already

    def _accept(self) -> None:
        while True:
            if self.connections >= self.max_connections:
                self.paused = True
                self._selector.unregister(self._listener)
                return
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            self.connections += 1
            state = _Connection(self.codec, time.monotonic() + self.hello_timeout_s)
            self._selector.register(conn, selectors.EVENT_READ, state)
            self._greeting.append((conn, state))

    def _expire(self, now: float) -> None:
        """Close the connections that have not greeted by their deadline (a worker greets at once)."""
        while self._greeting and (self._greeting[0][1].greeted or not self._greeting[0][1].open
                                  or self._greeting[0][1].greet_by <= now):
            conn, state = self._greeting.popleft()
            if state.open and not state.greeted:
                self.timed_out += 1
                if self.timed_out == 1 or self.timed_out % 1000 == 0:
                    log.warning("stream channel: closed a connection that did not greet within %gs; %d so far",
                                self.hello_timeout_s, self.timed_out)
                self._drop(conn)

    def _drop(self, conn: Any) -> None:
        state = self._selector.get_key(conn).data
        if isinstance(state, _Connection):
            state.open = False
        self._selector.unregister(conn)
        conn.close()
        self.connections -= 1
        if self.paused and self.connections < self.max_connections:
            self.paused = False
            self._selector.register(self._listener, selectors.EVENT_READ, None)

    def _read(self, conn: Any, state: _Connection) -> None:
        try:
            data = conn.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self._drop(conn)
        try:
            bodies = state.decoder.feed(data)
        except FrameRefused as exc:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("stream channel: refused a connection's frames (%s); %d so far", exc, self.refused)
            return self._drop(conn)
        for body in bodies:
            if not state.greeted:
                token = body.get("hello")
                if not isinstance(token, str) or not hmac.compare_digest(token, self.token):
                    self.refused += 1
                    return self._drop(conn)
                state.greeted = True
                continue
            fields = chunk_fields(body)
            if fields is None:
                continue
            request_id, seq, text, tools = fields
            with self._lock:
                target: ChunkTarget | None = self._pushes.get(request_id) or self._routes.get(request_id)
            if target is not None:
                self.delivered += 1
                target.put(TokenChunk(request_id, seq, text, tools))


_shared: tuple[int, StreamReceiver] | None = None
_shared_lock = threading.Lock()


def shared_receiver(keyring: Any) -> StreamReceiver | None:
    """This process's receiver (made on first use; a forked child makes its own), or None."""
    global _shared
    if keyring is None:
        return None
    with _shared_lock:
        if _shared is not None and _shared[0] == os.getpid():
            return _shared[1]
        try:
            receiver = StreamReceiver(keyring)
        except OSError as exc:
            log.warning("no stream channel (%s): chunks come as messages", exc)
            return None
        _shared = (os.getpid(), receiver)
        return receiver
