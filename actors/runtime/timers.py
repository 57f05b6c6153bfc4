"""Every actor's timers: named, one pending per name (and key), the earliest due wins.

Thespian has one timer primitive, ``wakeupAfter(delay, payload)``, and cannot cancel it. An
actor that asks for a wakeup each time it might need one piles them up (Thespian's loop
walks every pending one on each turn), and then has to guess which firing is current.
``Timers`` is the one idiom every actor uses on top of it:

- ``at(name, due)`` / ``after(name, delay_s)``: be woken for ``name`` at ``due`` (monotonic
  seconds) unless an earlier one for ``name`` is pending; an earlier due supersedes a later one.
- ``cancel(name)``: the pending one's firing is ignored, and the next ``at`` arms afresh.
- ``fired(payload)`` in ``receiveMsg_WakeupMessage``: the :class:`Wake` that is current (no
  longer pending once returned), or None for a superseded, cancelled or foreign wakeup.

A ``key`` tells apart timers of one name that run side by side (a restart per engine, a
query per token). A firing that comes a hair before the due time (Thespian's timer and
``time.monotonic`` disagree slightly) still counts: the owner re-reads its own clock and asks
again for whatever is not yet due. The engine core keeps its own heap of deadlines and asks
its actor for one wakeup at a time (``WakeAt``), which goes through here too.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

__all__ = ["Timers", "Wake"]

MIN_DELAY_S = 0.001  # a zero delay makes Thespian skip its select(), starving other messages


@dataclass(frozen=True)
class Wake:
    """The payload of every wakeup a :class:`Timers` asks for."""

    name: str
    key: Hashable
    token: int


class Timers:
    def __init__(self, actor: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._actor = actor
        self._clock = clock
        self._tokens = itertools.count(1)
        self._pending: dict[tuple[str, Hashable], tuple[float, int]] = {}   # (name, key) -> (due, token)

    def at(self, name: str, due: float | None, key: Hashable = None) -> None:
        """Be woken for ``name`` at ``due`` (monotonic seconds) unless an earlier one is pending."""
        if due is None:
            return
        pending = self._pending.get((name, key))
        if pending is not None and pending[0] <= due:
            return
        token = next(self._tokens)
        self._pending[(name, key)] = (due, token)
        delay = max(MIN_DELAY_S, due - self._clock())
        self._actor.wakeupAfter(timedelta(seconds=delay), payload=Wake(name, key, token))

    def after(self, name: str, delay_s: float, key: Hashable = None) -> None:
        self.at(name, self._clock() + delay_s, key)

    def cancel(self, name: str, key: Hashable = None) -> None:
        self._pending.pop((name, key), None)

    def due(self, name: str, key: Hashable = None) -> float | None:
        """When the pending wakeup for ``name`` fires, or None when none is pending."""
        pending = self._pending.get((name, key))
        return pending[0] if pending is not None else None

    def fired(self, payload: Any) -> Wake | None:
        """The current wakeup (then no longer pending), or None for a stale or foreign one."""
        if not isinstance(payload, Wake):
            return None
        pending = self._pending.get((payload.name, payload.key))
        if pending is None or pending[1] != payload.token:
            return None
        del self._pending[(payload.name, payload.key)]
        return payload
