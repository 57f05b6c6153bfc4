"""A caller's links to its node's engines on this host: calls and cancels out, terminals back.

Without them each call is a Thespian message from the calling thread's own endpoint, and its
terminal another one back: a burst of calls reached an engine over ~0.4-0.9 s, and held up its
other work meanwhile (docs/performance.md, round 7). A link is one loopback connection per
(process, engine), shared by the process's threads, carrying the wire's signed envelopes with
the framing of the engine's links to its worker processes (``runtime/control_link.py``; the
engine's end is ``runtime/caller_links.py``):

- **connecting**: to the control port the route names (``RouteEntry.control_port``), only when
  the node is on this host; the engine's first frame must be a ``LinkHello`` from the very
  engine the route named, or the link is not used; threads that need the link while one makes
  it wait for it (bounded), then use it or send by Thespian;
- **sending**: a thread writes its whole frame under the link's lock, waiting at most
  ``WRITE_TIMEOUT_S`` for the socket; a link that cannot take it is closed, and the call goes by
  Thespian as it would have (the engine never reads part of a frame);
- **receiving**: the stream channel's thread (``stream_receiver.py``) reads the link and files
  each terminal in the inbox of the thread that waits for it, as it files chunks;
- a link that fails is not tried again for ``RETRY_AFTER_S``; calls then go by Thespian.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from actors.runtime.control_link import ControlLink, Wire, address_key, connect
from actors.runtime.protocol import LinkHello
from actors.stream_receiver import StreamReceiver

__all__ = ["CallerLinks", "CONNECT_WAIT_S", "HELLO_WAIT_S", "RETRY_AFTER_S", "WRITE_TIMEOUT_S"]

log = logging.getLogger("atomr.client")

HELLO_WAIT_S = 1.0       # for the engine's greeting on a new link
CONNECT_WAIT_S = 1.0     # beyond the greeting, for the loopback connect itself (callers waiting for a link)
WRITE_TIMEOUT_S = 1.0    # for the socket to take one frame
RETRY_AFTER_S = 5.0      # a link that failed is not tried again before


class _Held:
    """One engine's link, and the lock its writers take."""

    def __init__(self, engine: Any, link: ControlLink) -> None:
        self.engine = engine
        self.link = link
        self.lock = threading.Lock()

    def send(self, sender: Any, message: Any, blocking: bool = True) -> bool:
        """True once ``message`` is written whole; False when it was not (send it by Thespian)."""
        if not self.lock.acquire(blocking=blocking):
            return False
        try:
            link = self.link
            if not link.send(sender, message):
                return False
            deadline = time.monotonic() + WRITE_TIMEOUT_S
            while link.pending and not link.closed:
                left = deadline - time.monotonic()
                poller = select.poll()
                poller.register(link.fileno(), select.POLLOUT)
                if left <= 0 or not poller.poll(left * 1000):
                    link.close(f"the engine took nothing for {WRITE_TIMEOUT_S:g}s")
                    break
                link.flush()
            # The outbox is empty whenever the lock is free: what a closed link did not write is this frame.
            return not link.closed or not link.stranded()
        finally:
            self.lock.release()


class CallerLinks:
    """This process's links, one per engine, made on first use."""

    def __init__(self, wire: Wire, receiver: StreamReceiver, *, connector: Callable[..., ControlLink] = connect,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.wire = wire
        self.receiver = receiver
        self.connector = connector
        self.clock = clock
        self._lock = threading.Lock()
        self._held: dict[Any, _Held] = {}
        self._connecting: dict[Any, threading.Event] = {}   # engine key -> set once its link is made or not
        self._failed: dict[Any, float] = {}      # engine key -> not tried again before this (clock)
        self.made = self.refused = 0

    def send(self, engine: Any, port: int | None, sender: Any, message: Any, blocking: bool = True) -> bool:
        """Send ``message`` from ``sender`` on the link to ``engine`` (its control listener on loopback
        ``port``); False when it did not go (send it by Thespian)."""
        if port is None:
            return False
        held = self._link_to(engine, port)
        if held is None:
            return False
        sent = held.send(sender, message, blocking=blocking)
        if held.link.closed:
            self._gone(held)
        return sent

    def linked(self, engine: Any) -> bool:
        with self._lock:
            held = self._held.get(address_key(engine))
        return held is not None and not held.link.closed

    def close(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for one in held:
            one.link.close("the client closed")

    def _link_to(self, engine: Any, port: int) -> _Held | None:
        key = address_key(engine)
        with self._lock:
            held = self._held.get(key)
            if held is not None and not held.link.closed:
                return held
            if self._failed.get(key, -1.0) > self.clock():
                return None
            made = self._connecting.get(key)
            if made is None:
                self._connecting[key] = made = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            # Another thread is making the link: wait for it (a greeting's time at most) rather than
            # send by Thespian, the slow path. A fresh process's first burst otherwise sent most of
            # its calls that way, and a tenth of them got their first token over a second late.
            made.wait(HELLO_WAIT_S + CONNECT_WAIT_S)
            with self._lock:
                held = self._held.get(key)
            return held if held is not None and not held.link.closed else None
        held = None
        try:
            held = self._connect(engine, port)
            if held is not None:
                self.receiver.watch(held.link, lambda: self._read(held))
        finally:
            with self._lock:
                del self._connecting[key]
                if held is None:
                    self._failed[key] = self.clock() + RETRY_AFTER_S
                else:
                    self._held[key] = held
                    self.made += 1
            made.set()
        return held

    def _connect(self, engine: Any, port: int) -> _Held | None:
        try:
            link = self.connector(port, self.wire, node_only=False)
        except OSError:
            return None
        poller = select.poll()
        poller.register(link.fileno(), select.POLLIN)
        envelopes = link.receive() if poller.poll(HELLO_WAIT_S * 1000) else []
        hello = envelopes[0] if len(envelopes) == 1 else None
        if hello is None or hello[0] != engine or not isinstance(hello[1], LinkHello) or hello[1].engine != engine:
            self.refused += 1
            link.close("not the engine its route named")
            log.warning("no caller link to %s on port %d: %s", engine, port,
                        link.why if hello is None and link.why else "another engine answered there")
            return None
        return _Held(engine, link)

    def _read(self, held: _Held) -> bool:
        """From the receiver's thread: file what came; False once the link is closed."""
        for sender, message in held.link.receive():
            if sender != held.engine:
                held.link.close(f"a frame from {sender}, not its engine")
                break
            self.receiver.file(message)
        if held.link.closed:
            self._gone(held)
            return False
        return True

    def _gone(self, held: _Held) -> None:
        key = address_key(held.engine)
        with self._lock:
            if self._held.get(key) is held:
                del self._held[key]
                self._failed[key] = self.clock() + RETRY_AFTER_S
