"""Waking an actor from a file descriptor instead of a timer (Thespian's ``ThespianWatch``).

An actor whose ``receiveMessage`` returns ``ThespianWatch([fd, ...])`` is handed a
``WatchMessage`` when one of them is readable; the list holds until the next handler
returns, so an actor that watches must return it from every handler. Only the TCP
transport (``multiprocTCPBase``) honours it; the in-process ``simpleSystemBase`` of the
unit tier ignores it, and there the caller keeps polling with wakeups.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["WakePipe", "open_process_fd", "waker", "watch_supported"]


class WakePipe:
    """A self-pipe: ``notify()`` from any thread makes ``fileno()`` readable until ``drain()``."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def fileno(self) -> int:
        return self.read_fd

    def notify(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except OSError:
            pass  # full: already readable, and one wake-up is enough

    def drain(self) -> None:
        try:
            while len(os.read(self.read_fd, 4096)) == 4096:
                pass
        except OSError:
            pass


def waker(asked: deque[int], pipe: WakePipe | None, index: int) -> Callable[[], None]:
    """What slot ``index`` calls when it has something for the actor: ``index`` joins ``asked``,
    and the pipe is written when there is one (else the actor's poll finds it)."""
    if pipe is None:
        return lambda: asked.append(index)

    def wake() -> None:
        asked.append(index)
        pipe.notify()
    return wake


def open_process_fd(pid: int) -> int | None:
    """A pidfd that turns readable when ``pid`` exits, or None where the kernel has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def watch_supported(actor: Any) -> bool:
    """Does this actor's system deliver WatchMessages? Only the TCP transport does: its
    addresses are IP addresses, the in-process base's are plain ids."""
    return hasattr(getattr(actor.myAddress, "addressDetails", None), "connectArgs")
