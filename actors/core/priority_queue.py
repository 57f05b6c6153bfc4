"""Bounded priority queue for one engine: strict priority between levels, FIFO within a level.

When it is full, a higher-priority request may displace the newest of the lowest level (``displace``).

Entries are removable by key in O(1) (cancellation) and expirable by deadline. Removal
leaves a tombstone that ``pop`` skips, so the deques never need an O(n) delete.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from enum import IntEnum
from typing import Generic, TypeVar

__all__ = ["Priority", "RequestQueue"]

T = TypeVar("T")


class Priority(IntEnum):
    BACKGROUND = 0
    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, value: "int | str | Priority") -> "Priority":
        """Accept a member, its name (any case) or its number; ValueError otherwise."""
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown priority {value!r}; expected one of "
                                 f"{', '.join(p.name.lower() for p in cls)}") from None
        if isinstance(value, bool):
            raise ValueError(f"unknown priority {value!r}")
        return cls(value)


class RequestQueue(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        # Each insertion gets a fresh ticket, so a tombstone can never be mistaken for a
        # later re-insertion of the same key.
        self._tickets = itertools.count()
        self._levels: list[deque[tuple[Hashable, int]]] = [deque() for _ in Priority]
        self._live: dict[Hashable, tuple[Priority, T, int]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._live

    @property
    def full(self) -> bool:
        return len(self._live) >= self.capacity

    def push(self, key: Hashable, item: T, priority: Priority = Priority.NORMAL) -> bool:
        """Enqueue at the back of its level; False (nothing queued) when full."""
        if self.full:
            return False
        self._add(key, item, priority, front=False)
        return True

    def push_front(self, key: Hashable, item: T, priority: Priority = Priority.NORMAL) -> None:
        """Put an already-admitted request (a retry) back at the head of its level.

        It bypasses the capacity check: the request was accepted once, and refusing it
        now would turn a retry into a spurious QueueFull.
        """
        self._add(key, item, priority, front=True)

    def _add(self, key: Hashable, item: T, priority: Priority, front: bool) -> None:
        if key in self._live:
            raise KeyError(f"duplicate key {key!r}")
        ticket = next(self._tickets)
        self._live[key] = (priority, item, ticket)
        level = self._levels[priority]
        (level.appendleft if front else level.append)((key, ticket))

    def _head(self, pop: bool) -> tuple[Hashable, T] | None:
        for level in reversed(self._levels):
            while level:
                key, ticket = level[0]
                live = self._live.get(key)
                if live is None or live[2] != ticket:
                    level.popleft()  # tombstone left by remove()
                    continue
                if pop:
                    level.popleft()
                    del self._live[key]
                return key, live[1]
        return None

    def peek(self) -> tuple[Hashable, T] | None:
        return self._head(pop=False)

    def pop(self) -> tuple[Hashable, T] | None:
        return self._head(pop=True)

    def remove(self, key: Hashable) -> T | None:
        live = self._live.pop(key, None)
        return None if live is None else live[1]

    def displace(self, priority: Priority, eligible: Callable[[T], bool] = lambda _: True) -> tuple[Hashable, T] | None:
        """Remove and return the newest entry of the lowest level below ``priority`` (that ``eligible``
        accepts), or None when every queued entry is of ``priority`` or above. Under overload a
        higher-priority request takes the place of the request that waited least at the lowest
        level, so a flood of low traffic never locks high traffic out, and the oldest low
        requests keep their places (docs/reliability.md, "Priorities under overload")."""
        for level in self._levels[:priority]:
            for key, ticket in reversed(level):
                live = self._live.get(key)
                if live is not None and live[2] == ticket and eligible(live[1]):
                    del self._live[key]  # its deque entry is now a tombstone
                    return key, live[1]
        return None

    def remove_where(self, predicate: Callable[[T], bool]) -> list[tuple[Hashable, T]]:
        """Remove (and return, in priority order) every entry whose item matches."""
        doomed = [(key, item) for key, item in self.items() if predicate(item)]
        for key, _ in doomed:
            del self._live[key]
        return doomed

    def items(self) -> Iterator[tuple[Hashable, T]]:
        """Live entries in the order they would be popped."""
        for level in reversed(self._levels):
            for key, ticket in level:
                live = self._live.get(key)
                if live is not None and live[2] == ticket:
                    yield key, live[1]

    def depth_by_priority(self) -> dict[str, int]:
        depth = {p.name.lower(): 0 for p in Priority}
        for priority, _, _ in self._live.values():
            depth[priority.name.lower()] += 1
        return depth
