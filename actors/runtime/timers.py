"""Every actor's timers: named, one pending per name (and key), the earliest due wins.

Thespian has one timer primitive, ``wakeupAfter(delay, payload)``, and cannot cancel it. It
keeps the pending ones in a sorted list: each one asked for costs an insertion, a walk on every
turn of the actor's loop, and a message when it fires, current or not. A worker process that
armed a deadline and a coalescing timer per slot per attempt had hundreds pending. ``Timers``
is the one idiom every actor uses on top of it:

- ``at(name, due)`` / ``after(name, delay_s)``: be woken for ``name`` at ``due`` (monotonic
  seconds) unless an earlier one for ``name`` is pending; an earlier due supersedes a later one.
- ``cancel(name)``: the pending one is not fired, and the next ``at`` arms afresh.
- ``fired(payload)`` in ``receiveMsg_WakeupMessage``: the :class:`Wake` of every timer due
  now, earliest first (none for a foreign wakeup); ``current(wake)`` before each is handled,
  since a handler may cancel or re-arm one further down the list.

The timers live in a heap here, and Thespian holds at most a few wakeups for an actor: one for
the earliest due, plus any armed for a due since superseded by an earlier one. A ``key`` tells
apart timers of one name that run side by side (a restart per engine, a deadline per slot). A
firing that comes a hair before the due time (Thespian's timer and ``time.monotonic`` disagree
slightly) still counts (``EARLY_S``). The engine core keeps its own heap of deadlines and asks
its actor for one wakeup at a time (``WakeAt``), which goes through here too.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

__all__ = ["Timers", "Wake"]

MIN_DELAY_S = 0.001  # a zero delay makes Thespian skip its select(), starving other messages
EARLY_S = 0.002      # a wakeup this early for a due time still serves it


@dataclass(frozen=True)
class Wake:
    """One due timer, as ``fired`` hands it to its owner."""

    name: str
    key: Hashable
    token: int


@dataclass(frozen=True)
class _Tick:
    """The payload of every wakeup a :class:`Timers` asks Thespian for."""

    due: float


class Timers:
    def __init__(self, actor: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._actor = actor
        self._clock = clock
        self._tokens = itertools.count(1)
        self._pending: dict[tuple[str, Hashable], tuple[float, int]] = {}   # (name, key) -> (due, token)
        self._heap: list[tuple[float, int, str, Hashable]] = []             # stale entries dropped lazily
        self._armed: list[float] = []     # due times of the wakeups Thespian holds (a heap)
        self._firing: dict[tuple[str, Hashable], tuple[float, int]] = {}    # fired, not yet handled

    def at(self, name: str, due: float | None, key: Hashable = None) -> None:
        """Be woken for ``name`` at ``due`` (monotonic seconds) unless an earlier one is pending."""
        if due is None:
            return
        earlier = self._pending.get((name, key)) or self._firing.get((name, key))
        if earlier is not None and earlier[0] <= due:
            return
        token = next(self._tokens)
        self._pending[(name, key)] = (due, token)
        heapq.heappush(self._heap, (due, token, name, key))
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._pending):
            self._heap = [(d, t, n, k) for (n, k), (d, t) in self._pending.items()]
            heapq.heapify(self._heap)
        self._arm()

    def after(self, name: str, delay_s: float, key: Hashable = None) -> None:
        self.at(name, self._clock() + delay_s, key)

    def cancel(self, name: str, key: Hashable = None) -> None:
        self._pending.pop((name, key), None)
        self._firing.pop((name, key), None)

    def due(self, name: str, key: Hashable = None) -> float | None:
        """When the pending wakeup for ``name`` fires, or None when none is pending."""
        pending = self._pending.get((name, key))
        return pending[0] if pending is not None else None

    def fired(self, payload: Any) -> list[Wake]:
        """Every timer due now (then no longer pending), earliest first; none for a foreign wakeup."""
        if not isinstance(payload, _Tick):
            return []
        if payload.due in self._armed:
            self._armed.remove(payload.due)
            heapq.heapify(self._armed)
        now = self._clock()
        wakes = []
        while self._heap and self._heap[0][0] <= now + EARLY_S:
            due, token, name, key = heapq.heappop(self._heap)
            if self._pending.get((name, key)) == (due, token):
                del self._pending[(name, key)]
                self._firing[(name, key)] = (due, token)
                wakes.append(Wake(name, key, token))
        self._arm()
        return wakes

    def current(self, wake: Wake) -> bool:
        """``wake`` is still to be handled: no handler before it cancelled it. (Once true, it is handled.)"""
        firing = self._firing.pop((wake.name, wake.key), None)
        return firing is not None and firing[1] == wake.token

    def unhandled(self, wakes: list[Wake]) -> None:
        """A handler raised: those of ``wakes`` not handled yet are due again at once."""
        for wake in wakes:
            if self.current(wake):
                self.at(wake.name, self._clock(), wake.key)

    def _arm(self) -> None:
        """A wakeup from Thespian by the earliest pending due, unless one comes by then already."""
        heap = self._heap
        while heap and self._pending.get((heap[0][2], heap[0][3])) != (heap[0][0], heap[0][1]):
            heapq.heappop(heap)
        if not heap or (self._armed and self._armed[0] <= heap[0][0]):
            return
        due = heap[0][0]
        heapq.heappush(self._armed, due)
        delay = max(MIN_DELAY_S, due - self._clock())
        self._actor.wakeupAfter(timedelta(seconds=delay), payload=_Tick(due))
