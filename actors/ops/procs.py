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

from actors.core.procstat import group_members, live_stat

__all__ = ["listening_pids", "connected_pids", "admin_pgid", "admin_process", "pids_in_group", "kill_group",
           "port_is_listening", "wait_until", "listening_ports", "descriptors", "process_start_ticks", "parent_pid", "group_is_ours", "cmdline"]


LISTEN, ESTABLISHED = "0A", "01"  # /proc/net/tcp socket states


def _socket_inodes(port: int, state: str, remote_port: int | None = None) -> set[str]:
    """Inodes of the TCP sockets in ``state`` whose local port is ``port`` (and remote, ``remote_port``)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    if fields[3] != state or int(fields[1].rsplit(":", 1)[1], 16) != port:
                        continue
                    if remote_port is None or int(fields[2].rsplit(":", 1)[1], 16) == remote_port:
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes


def descriptors(pid: int | str) -> set[str]:
    """What the open descriptors of ``pid`` are: ``socket:[inode]``, ``pipe:[inode]``, a file's
    path; empty when the process is gone."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    out = set()
    for fd in names:
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue   # closed meanwhile
    return out


def _pids_with_inodes(inodes: set[str]) -> list[int]:
    targets = {f"socket:[{inode}]" for inode in inodes}
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and descriptors(entry) & targets]


_LOOPBACK = ("0100007F", "00000000000000000000000001000000")   # 127.0.0.1 and ::1 as /proc/net/tcp spells them


def listening_ports(pid: int, reachable_from_other_hosts: bool = False) -> set[int]:
    """TCP ports process ``pid`` listens on (read in its own network namespace); with
    ``reachable_from_other_hosts``, not those bound to loopback only."""
    inodes = {target[8:-1] for target in descriptors(pid) if target.startswith("socket:[")}
    if not inodes:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    if fields[3] == LISTEN and fields[9] in inodes:
                        address, port = fields[1].rsplit(":", 1)
                        if not (reachable_from_other_hosts and address in _LOOPBACK):
                            ports.add(int(port, 16))
        except OSError:
            continue
    return ports


def connected_pids(local_port: int, remote_port: int | None = None) -> list[int]:
    """PIDs owning a connected TCP socket whose local port is ``local_port`` (to ``remote_port``).

    An ephemeral port number is unique per destination only: the same local port may also
    be another process's connection elsewhere, so name the remote port when it is known.
    """
    inodes = _socket_inodes(local_port, ESTABLISHED, remote_port)
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


def process_start_ticks(pid: int) -> int | None:
    """When a live process started (clock ticks since boot): a pid plus this names one process."""
    stat = live_stat(pid)
    return stat.start_ticks if stat is not None else None


def parent_pid(pid: int) -> int | None:
    stat = live_stat(pid)
    return stat.ppid if stat is not None else None


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [part.decode(errors="replace") for part in fh.read().split(b"\0") if part]
    except OSError:
        return []


def admin_process(port: int) -> tuple[int, int, int] | None:
    """(pid, start ticks, pgid) of the admin listening on ``port``: of the processes holding the
    listening socket (the admin and the logger it forked), the one whose parent is not among them."""
    pids = listening_pids(port)
    for pid in pids:
        parent = parent_pid(pid)
        ticks = process_start_ticks(pid)
        if parent is not None and parent not in pids and ticks is not None:
            try:
                return pid, ticks, os.getpgid(pid)
            except OSError:
                continue
    return None


def group_is_ours(pgid: int, admin_pid: int | None = None, admin_ticks: int | None = None) -> bool:
    """May we signal process group ``pgid``? Only while our admin lives (same pid and start time),
    or, once it is gone, while the group still has members: Linux does not reuse a pid that is
    still some group's id, so a non-empty group is still the one we started."""
    if admin_pid is not None and process_start_ticks(admin_pid) == admin_ticks:
        try:
            return os.getpgid(admin_pid) == pgid
        except OSError:
            return False
    return bool(pids_in_group(pgid))


def pids_in_group(pgid: int) -> list[int]:
    return group_members(pgid)


def kill_group(pgid: int, settle_s: float = 2.0) -> None:
    """SIGKILL the group, again while members remain (a process forked as the first signal
    went out may miss it), for at most ``settle_s``."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if not pids_in_group(pgid) or time.monotonic() >= deadline:
            return
        time.sleep(0.02)


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
