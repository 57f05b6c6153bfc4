"""The worker's wake-ups from file descriptors: the reader's self-pipe and the parent's pidfd."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading

from actors.runtime.wake import WakePipe, open_process_fd


def _readable(fd: int, timeout_s: float = 0.0) -> bool:
    # poll, not select: a long test run may hold more than FD_SETSIZE (1024) descriptors.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def test_notifies_from_another_thread_make_it_readable_until_drained_however_many_there_were():
    pipe = WakePipe()
    assert not _readable(pipe.fileno())
    threads = [threading.Thread(target=lambda: [pipe.notify() for _ in range(20_000)]) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 40 000 notifies overfill the pipe: the extra ones are dropped, never block the reader.
    assert _readable(pipe.fileno())
    pipe.drain()
    assert not _readable(pipe.fileno())
    pipe.notify()
    assert _readable(pipe.fileno(), 1.0)


def test_a_process_fd_turns_readable_when_the_process_exits():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    fd = open_process_fd(child.pid)
    if fd is None:  # a kernel without pidfds: the worker polls its parent instead
        child.kill()
        child.wait()
        return
    try:
        assert not _readable(fd)
        # Ended by a signal, not by closing its stdin: another thread of this process may hold a copy
        # of the pipe's write end (a fork in between), and the child would then wait for ever.
        child.terminate()
        assert _readable(fd, 10.0)
    finally:
        child.kill()
        child.wait(10)
        child.stdin.close()
        os.close(fd)
