"""One pending wakeup per actor, earliest due wins, with a typed payload.

Thespian cannot cancel a wakeup. An actor that asks for a wakeup each time it might need
one piles them up, and then has to guess which firing is current. ``Alarm`` keeps at
most one that matters: asking for a later time than the pending one does nothing, asking
for an earlier one supersedes it, and a superseded wakeup is recognised by its token when
it fires. A firing that comes a hair before the monotonic due time (Thespian's timer and
``time.monotonic`` disagree slightly) still counts: the owner re-reads its own clock and
asks again for whatever is not yet due.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

__all__ = ["Alarm", "Wake"]

MIN_DELAY_S = 0.001  # a zero delay makes Thespian skip its select(), starving other messages


@dataclass(frozen=True)
class Wake:
    """The payload of every wakeup an :class:`Alarm` asks for."""

    owner: str
    token: int


class Alarm:
    def __init__(self, actor: Any, owner: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._actor = actor
        self._owner = owner
        self._clock = clock
        self._tokens = itertools.count(1)
        self._token = 0
        self.due: float | None = None

    def at(self, due: float | None) -> None:
        """Be woken at ``due`` (monotonic seconds) unless something earlier is already pending."""
        if due is None or (self.due is not None and self.due <= due):
            return
        self.due = due
        self._token = next(self._tokens)
        delay = max(MIN_DELAY_S, due - self._clock())
        self._actor.wakeupAfter(timedelta(seconds=delay), payload=Wake(self._owner, self._token))

    def fired(self, payload: Any) -> bool:
        """True for the current wakeup (which is then no longer pending); False for stale ones."""
        if not isinstance(payload, Wake) or payload.owner != self._owner or payload.token != self._token:
            return False
        self.due = None
        return True
