"""core/chunk_order.py: a stream's chunks due in seq order, each once, whatever order they come in."""

from __future__ import annotations

from actors.core.chunk_order import ChunkOrder
from actors.types import TokenChunk


def c(seq: int, text: str = "") -> TokenChunk:
    return TokenChunk("r", seq, text or str(seq))


def test_chunks_in_order_are_due_at_once_and_early_ones_wait_for_the_missing_one():
    order: ChunkOrder[TokenChunk] = ChunkOrder()
    assert order.add(c(0)) == [c(0)] and order.next_seq == 1
    assert order.add(c(3)) == [] and order.add(c(2)) == [] and order.next_seq == 1
    assert order.add(c(1)) == [c(1), c(2), c(3)] and order.next_seq == 4


def test_a_repeat_is_never_due_again_and_the_first_of_two_early_copies_is_the_one_kept():
    order: ChunkOrder[TokenChunk] = ChunkOrder()
    assert order.add(c(0)) == [c(0)] and order.add(c(0)) == []
    assert order.add(c(2, "first")) == [] and order.add(c(2, "second")) == []
    assert order.add(c(1)) == [c(1), c(2, "first")] and order.add(c(1)) == [] and order.next_seq == 3
