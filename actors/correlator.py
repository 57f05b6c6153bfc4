"""One correlator per client endpoint: every arriving message is filed under its key.

Thespian's ``ask``/``listen`` return whatever reaches the endpoint next: a late chunk of
an abandoned stream, another request's terminal, a status reply. A request (keyed by its
``request_id``) or a lookup (keyed by a fresh ``token``) opens a mailbox, and reads only
its own mailbox; whatever arrives meanwhile is filed in the mailbox it belongs to, or
dropped when nobody waits for it (a closed request's stragglers).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Protocol

from thespian.actors import ActorSystemFailure, ActorSystemRequestTimeout, PoisonMessage

from actors.security.thespian_hooks import WATCHED, listen_or_watch

__all__ = ["Correlator", "Endpoint", "Watched", "key_of"]


class Endpoint(Protocol):
    """One thread's own address on an actor system (``ActorSystem.private()``): what it is sent comes
    to it alone. ``ask`` and ``listen`` return the next message that arrives (not necessarily the
    answer), or None at the timeout; ``ask`` returns None at once when the message could not be delivered."""

    def tell(self, target: Any, message: Any) -> None: ...

    def ask(self, target: Any, message: Any, timeout: float) -> Any: ...

    def listen(self, timeout: float) -> Any: ...


class Watched(Protocol):
    """Chunks that arrive beside the endpoint (``stream_receiver.Inbox``), and the descriptor that says so."""

    def fileno(self) -> int: ...

    def drain(self) -> list[Any]: ...

    def take(self) -> list[Any]: ...

# A mailbox nobody reads holds at most this many messages; older ones are dropped first.
MAILBOX_LIMIT = 10_000


def key_of(message: Any) -> str:
    """The mailbox a message belongs to: its request id, else its token ('' when it has neither)."""
    if isinstance(message, PoisonMessage):
        return key_of(message.poisonMessage)
    for attribute in ("request_id", "token"):
        value = getattr(message, attribute, None)
        if isinstance(value, str) and value:
            return value
    return ""


class Correlator:
    """Not thread-safe, like the endpoint it wraps: one per thread."""

    def __init__(self, endpoint: Endpoint, inbox: Watched | None = None) -> None:
        self.endpoint = endpoint
        self.inbox = inbox          # the stream channel's chunks for this thread (stream_receiver.Inbox)
        self.boxes: dict[str, deque[Any]] = {}
        self.dropped = 0

    def open(self, key: str) -> None:
        self.boxes.setdefault(key, deque(maxlen=MAILBOX_LIMIT))

    def close(self, key: str) -> None:
        self.boxes.pop(key, None)

    def file(self, message: Any) -> None:
        box = self.boxes.get(key_of(message))
        if box is None:
            self.dropped += 1
        else:
            box.append(message)

    def ask(self, target: Any, message: Any, key: str, timeout_s: float) -> Any:
        """Send and wait for the first message filed under ``key``.

        None at once when Thespian could not deliver the message (``ask`` says so by
        returning None before its timeout), or None at the timeout.
        """
        self.open(key)
        deadline = time.monotonic() + timeout_s
        if self.inbox is not None and getattr(message, "channel", None) is not None:
            # Its chunks come on the stream channel, not to this endpoint: an ask would sleep
            # through them. ``tell`` returns once the message is delivered and raises if it is not.
            try:
                self.endpoint.tell(target, message)
            except (ActorSystemFailure, ActorSystemRequestTimeout):
                return None
            return self.wait(key, deadline - time.monotonic())
        reply = self.endpoint.ask(target, message, max(0.001, timeout_s))
        if reply is None:
            return None
        self.file(reply)
        return self.wait(key, deadline - time.monotonic())

    def wait(self, key: str, timeout_s: float) -> Any:
        """The next message filed under ``key`` within ``timeout_s``, or None."""
        deadline = time.monotonic() + timeout_s
        box = self.boxes.get(key)
        if box is None:
            box = self.boxes[key] = deque(maxlen=MAILBOX_LIMIT)
        if self.inbox is not None:
            self._take_inbox(woken=False)   # what came while this thread was away: no read of its pipe
        while not box:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self.inbox is None:
                message = self.endpoint.listen(remaining)
            else:
                message = listen_or_watch(self.endpoint, [self.inbox.fileno()], remaining)
                if message is WATCHED:
                    self._take_inbox(woken=True)
                    continue
            if message is None:
                return None
            self.file(message)
        return box.popleft()

    def _take_inbox(self, woken: bool) -> None:
        if self.inbox is not None:
            for chunk in self.inbox.drain() if woken else self.inbox.take():
                self.file(chunk)

    def request(self, target: Any, message: Any, key: str, timeout_s: float) -> Any:
        """A one-off lookup: ask, take the answer, close the mailbox."""
        try:
            return self.ask(target, message, key, timeout_s)
        finally:
            self.close(key)
