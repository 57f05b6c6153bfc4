"""``launch.py status --watch`` in a real pseudo-terminal: a few live refreshes, then Ctrl-C.

The Ctrl-C is the byte 0x03 typed into the terminal, which the kernel's line discipline
turns into SIGINT for the foreground process, as at a keyboard.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path

from conftest import deployment

ROOT = Path(__file__).resolve().parents[2]


def _read_until(fd: int, buffer: bytearray, needle: bytes, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while needle not in buffer and time.monotonic() < deadline:
        poller = select.poll()   # not select: a long test run may hold more than 1024 descriptors
        poller.register(fd, select.POLLIN)
        if poller.poll(200):
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                return needle in buffer
            if not chunk:
                break
            buffer += chunk
    return needle in buffer


def _wait_exit(pid: int, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    return None


def test_status_watch_refreshes_and_leaves_cleanly_on_ctrl_c(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1")])
    client.complete("d1", [{"role": "user", "content": "hi"}], max_tokens=3)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160", "LINES": "50", "TERM": "xterm-256color"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        try:
            os.execve(sys.executable, [sys.executable, str(ROOT / "launch.py"), "status", "--watch",
                                       "--admin-port", str(node.admin_port)], env)
        finally:
            os._exit(127)
    status = None
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        out = bytearray()
        assert _read_until(fd, out, b"(#3)", 30), out.decode(errors="replace")[-2000:]
        screen = out.decode(errors="replace")
        assert "d1" in screen and "deployments" in screen and "breakers" in screen
        assert "(#1)" in screen and "(#2)" in screen     # redrawn in place, once a second
        os.write(fd, b"\x03")                           # Ctrl-C
        status = _wait_exit(pid, 15)
        _read_until(fd, out, b"\x00never", 0.5)          # whatever it wrote on the way out
        assert status is not None, "status --watch did not exit on Ctrl-C"
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, out.decode(errors="replace")[-2000:])
        tail = out.decode(errors="replace")
        assert "Traceback" not in tail and "KeyboardInterrupt" not in tail
        assert "\x1b[?25h" in tail                       # the cursor shown again: the terminal is restored
    finally:
        if status is None and _wait_exit(pid, 0) is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
