"""The worker's end of the stream channel: chunks as signed frames on a loopback socket.

A Thespian message costs about a millisecond of CPU to send on this machine; a signed frame
on a socket costs tens of microseconds (docs/performance.md). A streamed request may name
the stream channel of the process that sent it (``InferenceRequest.channel``: a loopback
port and that process's token); the worker keeps one connection per such process and
writes each chunk there. Everything else (the request, FirstToken, the attempt's result,
the terminal) stays a Thespian message, so the engine still owns the one terminal.

A worker only ever connects to 127.0.0.1 (through the process's transport,
``actors.runtime.transport``): a request cannot make it open a connection elsewhere. When the channel cannot be used (no key configured, refused, closed, slow to
drain) the chunk goes as a Thespian message instead; the caller orders chunks by ``seq``
whichever way each came. The slots of a worker process share its connections, and frames
that are due together leave in one write (:class:`StreamSender`).

A write never waits for its consumer. The process's body poller (``body_poller.py``) writes
the chunks of every slot from one thread, so one consumer that stopped reading must not hold
up the others' streams: a connection whose kernel buffers are full is dropped, what it did
not take goes as messages, and the next chunk connects again. Nor does the poller wait for
another thread's write: it has connections of its own (:meth:`StreamSender.own_connections`).
The actor thread writes each stream's first chunk, all at once while a burst of calls starts,
and a poller queued behind it waited up to ~50 ms for every stream of its process
(docs/performance.md, round 10).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from actors.core.frames import FrameCodec, chunk_body
from actors.runtime import transport
from actors.types import TokenChunk

__all__ = ["StreamSender", "ChannelTo", "use_keyring", "sender"]

CONNECT_TIMEOUT_S = 1.0
HELLO_TIMEOUT_S = 2.0       # for a new connection to take its greeting
MAX_CONNECTIONS = 256       # consumer processes one worker keeps a connection to
_TOKEN_LEN = 64

_codec: FrameCodec | None = None
_sender: "StreamSender | None" = None


def use_keyring(keyring: Any) -> None:
    """Set by the node before it forks its actors (the runtime layer never reads keys itself)."""
    global _codec, _sender
    _codec = FrameCodec(keyring) if keyring is not None else None
    _sender = None


def sender() -> "StreamSender | None":
    """This process's sender, or None when no key was configured (every chunk goes by Thespian)."""
    global _sender
    if _sender is None and _codec is not None:
        _sender = StreamSender(_codec, transport.installed())
    return _sender


def _target(channel: Any) -> tuple[int, str] | None:
    if not isinstance(channel, dict):
        return None
    port, token = channel.get("port"), channel.get("token")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    if not isinstance(token, str) or not 0 < len(token) <= _TOKEN_LEN:
        return None
    return port, token


class ChannelTo:
    """One request's stream channel (``InferenceRequest.channel``) through this process's sender."""

    def __init__(self, out: "StreamSender", channel: Any) -> None:
        self.out, self.channel = out, channel

    def send(self, chunk: TokenChunk) -> bool:
        return self.out.send(self.channel, chunk.request_id, chunk.seq, chunk.text, chunk.tool_calls)

    @property
    def last_failure(self) -> str:
        return self.out.last_failure


class _Batch:
    """Frames that queued while their connection was being written: they leave in one write."""

    __slots__ = ("frames", "done", "ok")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.done = threading.Event()
        self.ok = False


Key = tuple[int, str, int]   # a connection: the consumer's port and token, and its lane (0: shared)


class _Link:
    """One connection to one consumer process, shared by the threads of its lane."""

    __slots__ = ("sock", "writing", "queued", "nonblocking")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Real sockets are written without waiting; the unit tier's in-memory ones block as
        # their consumer tells them to (their tests hold a write to watch frames queue).
        self.nonblocking = isinstance(sock, socket.socket)
        self.writing = False           # a thread is writing: others queue their frames
        self.queued: _Batch | None = None


class StreamSender:
    """This process's writer of frames, one connection per consumer process (and lane).

    Frames that are due together leave together: while one thread writes to a connection, the
    frames other threads send to it queue up, and that thread writes them all in its next
    write (one system call). Each sender still learns whether its own frame was written (it
    waits for its batch), so a frame that cannot be written falls back to a message, in order.
    """

    def __init__(self, codec: FrameCodec, network: transport.Transport | None = None) -> None:
        self.codec = codec
        self.network = network or transport.TcpTransport()
        self.links: dict[Key, _Link] = {}
        self.failed: set[tuple[int, str]] = set()   # refused once: Thespian for the rest of this process
        self._lock = threading.Lock()   # the links and their queues (never held while writing)
        self._lane = threading.local()   # .id: this thread's own connections (own_connections)
        self.last_failure = ""
        self.writes = self.frames = 0

    def send(self, channel: Any, request_id: str, seq: int, text: str, tool_calls: list[dict[str, Any]]) -> bool:
        """True when the chunk was written to the channel; False: send it another way."""
        target = _target(channel)
        if target is None or target in self.failed:
            return False
        frame = self.codec.encode(chunk_body(request_id, seq, text, tool_calls))
        key: Key = (target[0], target[1], getattr(self._lane, "id", 0))
        with self._lock:
            self.frames += 1
            link = self.links.get(key)
            if link is None:
                link = self._connect(key)
                if link is None:
                    return False
            if link.writing:
                batch = link.queued = link.queued or _Batch()
                batch.frames.append(frame)
            else:
                link.writing, batch = True, None
        if batch is not None:
            batch.done.wait()   # the writing thread writes it next, and always says how it went
            return batch.ok
        return self._write(key, link, [frame])

    def own_connections(self) -> None:
        """The calling thread writes on connections of its own: it never waits for another's write."""
        self._lane.id = threading.get_ident()

    def _write(self, key: Key, link: _Link, frames: list[bytes]) -> bool:
        """Write ``frames``, then whatever queued meanwhile, until nothing is queued."""
        mine, batch, released = None, None, False
        try:
            while True:
                ok = self._sendall(key, link, frames)
                mine = ok if mine is None else mine
                if batch is not None:
                    batch.ok = ok
                    batch.done.set()
                with self._lock:
                    batch, link.queued = link.queued, None
                    if batch is None or not ok:
                        link.writing, released = False, True
                        break
                frames = batch.frames
        finally:
            if not released:   # this thread failed: whatever queued falls back
                with self._lock:
                    link.writing = False
                    stranded, link.queued = link.queued, None
                if stranded is not None:
                    stranded.done.set()
            if batch is not None and not batch.done.is_set():
                batch.done.set()   # not written (the link failed): its senders fall back
        return bool(mine)

    def _sendall(self, key: Key, link: _Link, frames: list[bytes]) -> bool:
        payload = frames[0] if len(frames) == 1 else b"".join(frames)
        try:
            if link.nonblocking:
                if link.sock.send(payload) < len(payload):   # raises BlockingIOError when it takes nothing
                    raise BlockingIOError("the consumer is not reading: its connection is full")
            else:
                link.sock.sendall(payload)
            self.writes += 1
            return True
        except OSError as exc:
            # A frame cut short is dropped by the consumer with the connection; the frames before
            # it may arrive as well as their messages (the caller takes each seq once).
            # Not logged here: a slot's thread is the caller, and only the actor thread may log
            # (a log record is a Thespian message). The actor logs the fallback.
            with self._lock:
                if self.links.get(key) is link:
                    self._drop(key)
            self.last_failure = f"port {key[0]}: {type(exc).__name__}"
            return False

    def _connect(self, key: Key) -> _Link | None:
        if len(self.links) >= MAX_CONNECTIONS:
            oldest = next(iter(self.links))
            self._drop(oldest)
        port, token, _ = key
        sock = None
        try:
            sock = self.network.connect("127.0.0.1", port, CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(HELLO_TIMEOUT_S)
            sock.sendall(self.codec.encode({"hello": token}))
            if isinstance(sock, socket.socket):
                sock.setblocking(False)   # and no poll() before each send, as a timeout costs
        except OSError as exc:
            if sock is not None:
                sock.close()
            self.failed.add((port, token))
            self.last_failure = f"port {port}: {type(exc).__name__}"
            return None
        link = self.links[key] = _Link(sock)
        return link

    def _drop(self, key: Key) -> None:
        link = self.links.pop(key, None)
        if link is not None:
            try:
                link.sock.close()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            for key in list(self.links):
                self._drop(key)
