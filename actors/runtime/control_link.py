"""An engine's control messages to and from its worker processes on one socket each, off Thespian.

Thespian's TCP transport sends one message at a time to a given address and waits for its
acknowledgement before the next (TCPTransport's ``_next_XMIT_1``): a burst of 256 calls put
32 messages in line for each worker process (16 dispatches, 16 first-token answers) behind a
round trip each to a busy process, and the first tokens of a burst waited seconds for
their answers (docs/performance.md, round 6). A :class:`ControlLink` carries the same
messages on a persistent loopback connection, written without waiting for anything:

- **the same frames**: each message is the ``(sender, message)`` envelope the wire's
  serializer signs for Thespian (``actors/security/serializer.py``), length-prefixed; read
  back through the same ``loads`` (signature, allow-list, the permission table), and only
  frames tagged by a process of this node are taken;
- **the same handlers**: what arrives is handed to the actor's ``receiveMessage`` as if
  Thespian had delivered it; a handler that raises answers its sender with a
  ``PoisonMessage``, as Thespian does;
- **the same order**: while a link is up, every message between the two goes on it; a link
  that fails (closed, refused, or its peer more than ``STALL_S`` behind) hands back what it
  could not deliver whole, which then goes by Thespian, in order, and so does the rest.

The engine listens (:class:`ControlListener`, loopback only, its port in ``WorkerInit``); a
worker process connects and its first frame, ``WorkerReady``, says which of the engine's
processes it is. Both ends are woken by ``ThespianWatch`` on the sockets (the actor half is
``runtime/linked_actor.py``); where the system has no watches (the in-process
``simpleSystemBase``) there are no links and nothing changes.

A caller on this host links to the engine the same way, for its calls (``runtime/caller_links.py``
on the engine's side, ``actors/caller_links.py`` on the caller's): the engine greets every
connection it accepts with its address (``LinkHello``), and a caller's frames, signed but not
tagged by the node, are read with the permissions of a local caller.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import deque
from typing import Any, Protocol

from actors.core.frames import loopback_listener

__all__ = ["MAX_FRAME_BYTES", "STALL_S", "ControlLink", "ControlListener", "address_key", "connect", "use_wire",
           "wire_codec"]

MAX_FRAME_BYTES = 64 * 1024 * 1024  # a larger message (a huge prompt) goes by Thespian
STALL_S = 2.0                        # a peer that reads nothing this long loses its link
HELLO_TIMEOUT_S = 5.0                # an accepted connection names its process by then, or is closed
MAX_PENDING = 64                     # accepted connections that have not named their process yet
READ_BYTES = 256 * 1024
WRITE_BYTES = 256 * 1024             # queued frames joined into one write, up to this
READS_PER_WAKE = 16                  # then back to Thespian's loop (the socket stays readable)
_LENGTH = struct.Struct(">I")


class Wire(Protocol):
    """What the link needs of the wire's serializer (``actors.security.serializer.WireSerializer``)."""

    def dumps(self, obj: Any) -> bytes: ...

    def verify(self, data: Any) -> tuple[Any, bool]: ...

    def loads(self, data: bytes, peer: tuple[str, int] | None = None) -> Any: ...


_wire: Wire | None = None


def use_wire(wire: Wire | None) -> None:
    """Set by the node before it forks its actors (the runtime layer never reads keys itself)."""
    global _wire
    _wire = wire


def wire_codec() -> Wire | None:
    return _wire


def address_key(address: Any) -> Any:
    """A hashable key for a Thespian address (its ActorAddress is not hashable; a TCP address's details are).
    An address without hashable details (an actor's own, not yet assigned) is never linked."""
    details = getattr(address, "addressDetails", address)
    try:
        hash(details)
    except TypeError:
        return ("never linked", id(address))
    return details


class Refused(Exception):
    """A frame this link must not believe: the link is closed."""


class ControlLink:
    """One connection between an engine and one worker process; either end owns one.

    ``send`` never blocks: what the socket does not take waits in the outbox and leaves with
    :meth:`flush` (the owner calls it on a short timer while :attr:`pending`).
    """

    def __init__(self, sock: Any, wire: Wire, peer: tuple[str, int] | None = ("127.0.0.1", 0),
                 clock: Any = time.monotonic, node_only: bool = True) -> None:
        self.sock = sock
        self.wire = wire
        self.peer = peer
        self.clock = clock
        # False for a connection the engine has not placed yet, and a caller's: frames not tagged by
        # the node are then read, as a local caller's (the wire's permission table applies).
        self.node_only = node_only
        self.untagged = 0          # frames read that the node did not tag
        self.closed = False
        self.why = ""
        self._in = bytearray()
        self._out: deque[tuple[Any, Any, memoryview]] = deque()   # (sender, message, bytes left)
        self._stuck_since: float | None = None
        self.sent = self.received = 0

    def fileno(self) -> int:
        return int(self.sock.fileno())

    @property
    def pending(self) -> bool:
        return bool(self._out)

    def send(self, sender: Any, message: Any, flush: bool = True) -> bool:
        """Queue and write ``message`` (``flush=False``: queue it; :meth:`flush` writes what is queued, in
        as few writes as the socket takes); False when the link cannot take it (send it another way)."""
        if self.closed:
            return False
        try:
            frame = self.wire.dumps((sender, message))
        except Exception:  # noqa: BLE001 - what cannot be pickled here fails by Thespian as it always did
            return False
        if len(frame) > MAX_FRAME_BYTES:
            return False
        self._out.append((sender, message, memoryview(_LENGTH.pack(len(frame)) + frame)))
        self.sent += 1
        if flush:
            self.flush()
        return True

    def flush(self) -> None:
        """Write what is queued: each write takes as many whole queued frames as fit ``WRITE_BYTES``."""
        while self._out and not self.closed:
            batch: list[memoryview] = []
            size = 0
            for _, _, left in self._out:
                if batch and size + len(left) > WRITE_BYTES:
                    break
                batch.append(left)
                size += len(left)
            try:
                n = self.sock.send(batch[0] if len(batch) == 1 else b"".join(batch))
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                return self.close(f"write failed ({type(exc).__name__})")
            written = n
            while written and self._out and written >= len(self._out[0][2]):
                written -= len(self._out[0][2])
                self._out.popleft()
            if written:
                sender, message, left = self._out[0]
                self._out[0] = (sender, message, left[written:])
            if n < size:
                now = self.clock()
                if n or self._stuck_since is None:
                    self._stuck_since = now
                elif now - self._stuck_since > STALL_S:
                    self.close(f"its peer read nothing for {STALL_S:g}s")
                return
            self._stuck_since = None

    def stranded(self) -> list[tuple[Any, Any]]:
        """Once closed: what was not written whole, in order (its peer never saw any of it)."""
        out = [(sender, message) for sender, message, _ in self._out]
        self._out.clear()
        return out

    def receive(self) -> list[tuple[Any, Any]]:
        """The envelopes that arrived whole; the link is closed at its peer's close or a refused frame."""
        if self.closed:
            return []
        for _ in range(READS_PER_WAKE):
            try:
                data = self.sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"read failed ({type(exc).__name__})")
                break
            if not data:
                self.close("closed by its peer")
                break
            self._in += data
            if len(data) < READ_BYTES:
                break
        try:
            return self._frames()
        except Refused as exc:
            self.close(str(exc))
            return []

    def _frames(self) -> list[tuple[Any, Any]]:
        out, offset, buffer = [], 0, self._in
        while len(buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length > MAX_FRAME_BYTES:
                raise Refused(f"a frame of {length} bytes")
            end = offset + _LENGTH.size + length
            if len(buffer) < end:
                break
            out.append(self._envelope(bytes(buffer[offset + _LENGTH.size:end])))
            offset = end
        del buffer[:offset]
        self.received += len(out)
        return out

    def _envelope(self, frame: bytes) -> tuple[Any, Any]:
        try:
            _, ours = self.wire.verify(frame)
        except Exception as exc:  # noqa: BLE001 - the serializer's Refused, whatever its text
            raise Refused(f"a frame that does not verify ({type(exc).__name__})") from None
        if not ours:
            if self.node_only:
                raise Refused("a frame not tagged by a process of this node")
            self.untagged += 1
        envelope = self.wire.loads(frame, self.peer)
        if not (isinstance(envelope, tuple) and len(envelope) == 2):
            raise Refused("a frame the wire refused")   # its serializer logged why
        return envelope[0], envelope[1]

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed, self.why = True, why
        try:
            self.sock.close()
        except OSError:
            pass


class ControlListener:
    """The engine's listening socket; accepted connections wait here until their first frame names them."""

    def __init__(self, wire: Wire, listener: Any = None, clock: Any = time.monotonic) -> None:
        self.wire = wire
        self.clock = clock
        self.sock = listener if listener is not None else loopback_listener(backlog=64)
        self.port: int = self.sock.getsockname()[1]
        self.waiting: list[tuple[float, ControlLink]] = []   # (accepted at, link)
        self.refused = 0

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:   # none waiting (BlockingIOError), or out of descriptors: next time
                return
            conn.setblocking(False)
            if hasattr(conn, "setsockopt"):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self.waiting) >= MAX_PENDING:
                self.refused += 1
                conn.close()
                continue
            self.waiting.append((self.clock(), ControlLink(conn, self.wire, clock=self.clock, node_only=False)))

    def expire(self) -> None:
        now = self.clock()
        keep = []
        for at, link in self.waiting:
            if link.closed or now - at > HELLO_TIMEOUT_S:
                self.refused += not link.closed
                link.close("did not name its process in time")
            else:
                keep.append((at, link))
        self.waiting = keep

    def close(self) -> None:
        for _, link in self.waiting:
            link.close("the engine stopped")
        self.waiting = []
        try:
            self.sock.close()
        except OSError:
            pass


def connect(port: int, wire: Wire, timeout_s: float = 1.0, node_only: bool = True) -> ControlLink:
    """A link to the engine listening on loopback ``port`` (a worker process's, from its WorkerInit;
    a caller's, from its route, with ``node_only=False``: the engine's frames are tagged for the node only)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return ControlLink(sock, wire, node_only=node_only)
