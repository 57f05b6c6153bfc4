"""A process forked under ``call_with_room`` pushes its frames without mapping memory per call.

CPython frees a frame-stack chunk when the first frame in it returns, so a thread that goes back
and forth over a chunk's edge maps and unmaps memory each time: each new chunk shows up as minor
page faults. Counted with ``getrusage`` for the calling thread only.
"""

from __future__ import annotations

import os
import resource
import sys

import pytest

from actors.runtime.data_stack import call_with_room

DEPTH = 300      # ~36 KiB of frames: more than one 16 KiB chunk, well within the room
TIMES = 200


def _down(n: int) -> int:
    return _down(n - 1) + 1 if n else 0


def _faults_while_oscillating() -> int:
    _down(DEPTH)   # once first: a forked child's first writes to its parent's pages fault too (copy on write)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(TIMES):
        assert _down(DEPTH) == DEPTH
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


def _in_child(under_room: bool) -> int:
    """Minor faults of the oscillation in a child forked here (under the room, or not)."""
    read, write = os.pipe()

    def fork_and_measure() -> int:
        pid = os.fork()
        if pid == 0:   # the child: measure, report, leave without running pytest's exit
            try:
                os.write(write, str(_faults_while_oscillating()).encode())
            finally:
                os._exit(0)
        return pid

    pid = call_with_room(fork_and_measure) if under_room else fork_and_measure()
    os.close(write)
    try:
        return int(os.read(read, 64) or b"-1")
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def test_it_calls_through_with_arguments_and_returns_the_result() -> None:
    assert call_with_room(lambda a, *, b: (a, b), 1, b=2) == (1, 2)
    with pytest.raises(ZeroDivisionError):
        call_with_room(lambda: 1 / 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts minor faults with RUSAGE_THREAD")
def test_frames_pushed_under_the_room_map_nothing_and_a_child_forked_there_keeps_it() -> None:
    plain = _faults_while_oscillating()
    if plain < TIMES:
        pytest.skip(f"this CPython keeps its frame-stack chunks ({plain} faults over {TIMES} deep calls)")
    # The chunk's pages are touched on the first pass only.
    assert call_with_room(_faults_while_oscillating) < TIMES // 10
    # What the engine does: the worker process is forked inside the call, and never returns from it.
    assert _in_child(under_room=False) >= TIMES
    assert _in_child(under_room=True) < TIMES // 10
