"""A client's liveness checks: one question per engine at a time, its answer shared.

Whether an engine is still the live one is a fact about the engine, not about a request. A
check per silent request made a burst of K starved streams send K checks a second to one
node's registry; each answer to a thread that had meanwhile finished its call waited, unread,
for Thespian's 5-minute transmit timeout, and past 950 of them the registry stopped reading
anything (Thespian's tx-only mode): no route lookups, no heartbeats (docs/reliability.md).
So a check is asked by one thread while the others use the last answer, fresh for ``fresh_s``.
Not thread-safe: the client calls it under its lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

Answer = TypeVar("Answer")

__all__ = ["SharedChecks"]


@dataclass
class _Check(Generic[Answer]):
    answered_at: float = float("-inf")
    answer: Answer | None = None
    asking: bool = False


class SharedChecks(Generic[Answer]):
    def __init__(self, fresh_s: float, clock: Callable[[], float] = time.monotonic, limit: int = 1024) -> None:
        self.fresh_s = fresh_s
        self.clock = clock
        self.limit = limit
        self._checks: dict[str, _Check[Answer]] = {}

    def claim(self, key: str) -> tuple[bool, Answer | None]:
        """(True, None): ask now, then :meth:`answered`; (False, answer): use the last answer
        (None if there is none yet), as one is fresh or another caller is asking."""
        check = self._checks.get(key)
        if check is None:
            if len(self._checks) >= self.limit:   # engines come and go: forget the oldest answers
                for old in sorted(self._checks, key=lambda k: self._checks[k].answered_at)[:self.limit // 4]:
                    if not self._checks[old].asking:
                        del self._checks[old]
            check = self._checks[key] = _Check[Answer]()
        if check.asking or self.clock() - check.answered_at < self.fresh_s:
            return False, check.answer
        check.asking = True
        return True, None

    def answered(self, key: str, answer: Answer | None) -> None:
        """The asker's answer (None: the node did not say in time), shared from now on."""
        check = self._checks.setdefault(key, _Check[Answer]())
        check.answered_at, check.answer, check.asking = self.clock(), answer, False
