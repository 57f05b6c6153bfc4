"""A node's processes hold none of the descriptors of the program that started it.

``start_node`` forks the admin from the calling program, and the admin forks the logger and every
actor. A fork inherits every descriptor, close-on-exec or not, so each node process held whatever
the launcher had open: a listening socket the launcher closed stayed bound in a dozen node
processes, with nobody to accept on it (a caller's connection there then hung), and any actor
could read or write the launcher's files, pipes and sockets (docs/security.md).

In a process forked by the thread that is inside :func:`not_inherited`, each descriptor that was
open when the block began now points at ``/dev/null``. Replaced, not closed: objects of the
launcher copied into the child still name those numbers, and one collected later would otherwise
close whatever the child had opened under the same number since.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["not_inherited"]

KEPT = frozenset({0, 1, 2})   # stdin, stdout, stderr: where the node logs when told to log to the console

# By thread inside the block: each descriptor open at its start, with what it was then (a
# descriptor closed meanwhile may be a new one by the fork, such as Thespian's own socket).
_pending: dict[int, dict[int, tuple[int, int]]] = {}


def _open_descriptors() -> dict[int, tuple[int, int]]:
    """The descriptors this process has open, each with its device and inode."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.fstat(int(name))
        except OSError:   # the listing's own descriptor, closed by now
            continue
        out[int(name)] = (st.st_dev, st.st_ino)
    return out


def _replace_in_child() -> None:
    fds = _pending.pop(threading.get_ident(), None)   # only the thread that forked runs on in the child
    # Once: the admin's own children inherit what the admin holds, which is the node's.
    _pending.clear()
    if fds is None:
        return
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd, was in fds.items():
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == was and fd != null:
                    os.dup2(null, fd, inheritable=False)
            except OSError:
                pass
    finally:
        os.close(null)


os.register_at_fork(after_in_child=_replace_in_child)


@contextmanager
def not_inherited() -> Iterator[None]:
    """Processes this thread forks inside the block do not hold what this process holds now."""
    me = threading.get_ident()
    _pending[me] = {fd: was for fd, was in _open_descriptors().items() if fd not in KEPT}
    try:
        yield
    finally:
        _pending.pop(me, None)
