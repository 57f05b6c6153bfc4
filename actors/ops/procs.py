"""Finding and stopping the processes of a Thespian actor system (Linux /proc).

Thespian's admin daemonizes (setsid, double fork) and outlives whoever started it, and
its logger keeps the admin port bound if only the admin dies. Every process of one
system shares the admin's process group, so that group is what a clean stop waits on,
and what a forced stop kills.
"""

from __future__ import annotations

import os
import signal
import socket
import time

__all__ = ["listening_pids", "connected_pids", "admin_pgid", "pids_in_group", "kill_group", "port_is_listening", "wait_until"]


LISTEN, ESTABLISHED = "0A", "01"  # /proc/net/tcp socket states


def _socket_inodes(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets in ``state`` whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes


def _pids_with_inodes(inodes: set[str]) -> list[int]:
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                    pids.append(int(entry))
                    break
        except OSError:
            continue
    return pids


def connected_pids(local_port: int) -> list[int]:
    """PIDs owning a connected TCP socket whose local port is ``local_port``."""
    inodes = _socket_inodes(local_port, ESTABLISHED)
    return _pids_with_inodes(inodes) if inodes else []


def listening_pids(port: int) -> list[int]:
    """PIDs holding a listening TCP socket on ``port`` (any address)."""
    inodes = _socket_inodes(port, LISTEN)
    return _pids_with_inodes(inodes) if inodes else []


def admin_pgid(port: int) -> int | None:
    for pid in listening_pids(port):
        try:
            return os.getpgid(pid)
        except OSError:
            continue
    return None


def pids_in_group(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(condition, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``condition`` until it is true or ``timeout_s`` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
