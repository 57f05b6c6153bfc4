"""Grow-only counter CRDT with delta extraction.

Each node only ever increments its own slot; merging takes the per-node maximum and the
value is the sum of the slots. Deltas carry *absolute* per-node counts (not increments),
so applying a delta is a merge too: idempotent, commutative and associative, which is what
lets nodes broadcast them without acknowledgements, duplicates or ordering guarantees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["GCounter"]


class GCounter:
    __slots__ = ("_counts", "_dirty")

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._counts: dict[str, int] = {}
        self._dirty: set[str] = set()
        if counts:
            self.merge_state(counts)

    def increment(self, node: str, amount: int = 1) -> None:
        if amount < 0:
            raise ValueError("a GCounter only grows; amount must be >= 0")
        if amount:
            self._counts[node] = self._counts.get(node, 0) + amount
            self._dirty.add(node)

    @property
    def value(self) -> int:
        return sum(self._counts.values())

    def get(self, node: str) -> int:
        return self._counts.get(node, 0)

    def nodes(self) -> Iterable[str]:
        return self._counts.keys()

    def state(self) -> dict[str, int]:
        return dict(self._counts)

    def merge_state(self, counts: Mapping[str, int]) -> bool:
        """Merge another replica's state (or a delta); True if anything grew."""
        grew = False
        mine = self._counts
        for node, count in counts.items():
            if count < 0:
                raise ValueError(f"negative count for {node!r}")
            if count > mine.get(node, 0):
                mine[node] = count
                grew = True
        return grew

    def merge(self, other: "GCounter") -> bool:
        return self.merge_state(other._counts)

    def take_delta(self) -> dict[str, int]:
        """Absolute counts of the slots incremented here since the last call."""
        delta = {node: self._counts[node] for node in self._dirty}
        self._dirty.clear()
        return delta

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GCounter) and self._counts == other._counts

    def __repr__(self) -> str:
        return f"GCounter({self._counts!r})"

    def __reduce__(self) -> tuple[type[GCounter], tuple[dict[str, int]]]:
        return (GCounter, (self._counts,))
