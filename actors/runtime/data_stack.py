"""Room on CPython's frame stack for a process forked from here.

CPython (3.11 to 3.13) keeps a thread's Python frames in chunks of 16 KiB, and frees a chunk as
soon as the first frame in it returns. A thread that goes back and forth over a chunk's edge
maps and unmaps memory each time (13 us a time, page faults included). A forked child runs on
top of its parent's frames, wherever their last chunk happened to end: a worker process's actor
thread crossed an edge 16 times a call (docs/performance.md, round 12).

:func:`call_with_room` calls ``fn`` under a frame too large for a 16 KiB chunk. CPython gives
that frame a 128 KiB chunk of its own, with about 60 KiB to spare for the frames called from it.
A child forked inside ``fn`` never returns from it, so its frames stay in that chunk for good.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

__all__ = ["call_with_room"]

T = TypeVar("T")

_LOCALS = 8192   # 8 bytes each: a 64 KiB frame, which CPython rounds up to a 128 KiB chunk


def _roomy(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    return fn(*args, **kwargs)


# Locals are the one portable way to make a frame this large; these are never bound.
_code = _roomy.__code__
_names = tuple(f"_room{i}" for i in range(_LOCALS))
_roomy.__code__ = _code.replace(co_varnames=_code.co_varnames + _names, co_nlocals=_code.co_nlocals + _LOCALS)


def call_with_room(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a frame-stack chunk of its own, with room to spare."""
    return _roomy(fn, args, kwargs)
