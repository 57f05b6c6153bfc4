"""A stream's chunks in ``seq`` order, each once, whichever way and order they arrive.

A caller gets a stream's chunks on the stream channel and, when that fails, as messages; the
two may cross, and a resent chunk may come twice. ``add`` takes each as it comes and returns
the ones now due, in order.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

__all__ = ["ChunkOrder", "Sequenced"]


class Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


C = TypeVar("C", bound=Sequenced)


class ChunkOrder(Generic[C]):
    __slots__ = ("next_seq", "_held")

    def __init__(self) -> None:
        self.next_seq = 0              # how many are due so far: the seq of the next one
        self._held: dict[int, C] = {}  # arrived ahead of a missing one

    def add(self, chunk: C) -> list[C]:
        """The chunks ``chunk`` makes due, in order: none when it is early or a repeat."""
        seq = chunk.seq
        if seq != self.next_seq:
            if seq > self.next_seq:
                self._held.setdefault(seq, chunk)
            return []
        due = [chunk]
        self.next_seq = seq = seq + 1
        held = self._held
        while held and seq in held:
            due.append(held.pop(seq))
            self.next_seq = seq = seq + 1
        return due
