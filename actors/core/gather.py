"""Scatter-gather bookkeeping: ask several parties, answer every waiter once with what came back.

Used for a node's status (its engines, breakers and limiter) and for the cluster's (every
node's registry). Pure: the actor sends the questions, feeds the answers in, and on its
timeout calls ``finish`` to answer with whatever arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Gathering"]


@dataclass
class Gathering:
    # Parties are compared with ==, not hashed: Thespian's addresses are unhashable.
    pending: list[Any]
    waiters: list[Any] = field(default_factory=list)
    parts: list[Any] = field(default_factory=list)

    def add(self, party: Any, part: Any) -> bool:
        """Record one answer; True when nothing is pending any more. Unknown or repeated parties are ignored."""
        if party in self.pending:
            self.pending.remove(party)
            self.parts.append(part)
        return not self.pending

    @property
    def done(self) -> bool:
        return not self.pending
