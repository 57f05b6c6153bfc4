"""LauncherWatchdog: a node never outlives its launcher.

Thespian's admin daemonizes (setsid, double fork), so nothing ties it to the process that
started it: a SIGKILLed launcher leaves a serving node behind. ``start_node`` creates one
watchdog per node and tells it the launcher's pid and /proc start time (a reused pid is not
the launcher). Every ``interval_s`` it checks that the launcher still exists and that its
own parent, the admin, does too; when either is gone it SIGKILLs the node's process group,
itself included, so every port is freed.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from thespian.actors import WakeupMessage

from actors.runtime.base import GatewayActor
from actors.runtime.logs import logger

log = logger("atomr.watchdog")

__all__ = ["LauncherWatchdog", "WatchLauncher", "Watching", "process_start_ticks"]


# Its messages live here, not in protocol.py: this module is in the wire's WIRE_MODULES.
@dataclass
class WatchLauncher:
    """From start_node: the node's processes exit when this launcher process is gone."""

    pid: int
    start_ticks: int          # /proc/<pid>/stat starttime: a reused pid is not the launcher
    capability: str = field(default="", repr=False)   # the launch capability, like Deploy's: never in a log
    interval_s: float = 0.5


@dataclass
class Watching:
    pid: int
    pgid: int


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None if no such live process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class LauncherWatchdog(GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.watch: WatchLauncher | None = None
        self.admin_pid = os.getppid()

    def receiveMsg_WatchLauncher(self, msg: WatchLauncher, sender: Any) -> None:
        first = self.watch is None
        self.watch = msg
        self.send(sender, Watching(msg.pid, os.getpgid(0)))
        if first:
            self.wakeupAfter(timedelta(seconds=msg.interval_s), payload="watchdog")

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if msg.payload == "kill":
            self._kill_group()
        if msg.payload != "watchdog" or self.watch is None:
            return
        why = self._gone()
        if why is None:
            self.wakeupAfter(timedelta(seconds=self.watch.interval_s), payload="watchdog")
            return
        log.warning("%s: stopping this node (process group %d)", why, os.getpgid(0))
        # The line is a message to the logger process, sent once this handler returns.
        self.wakeupAfter(timedelta(seconds=0.3), payload="kill")

    def _gone(self) -> str | None:
        watch = self.watch
        if process_start_ticks(watch.pid) != watch.start_ticks:
            return f"the node's launcher (pid {watch.pid}) is gone"
        if os.getppid() != self.admin_pid:
            return f"the node's admin (pid {self.admin_pid}) is gone"
        return None

    @staticmethod
    def _kill_group() -> None:
        # Everything of the node shares the admin's process group. Kill the others first, again
        # while any remain (a process forked as the signal went out can miss it), then this one.
        pgid, me = os.getpgid(0), os.getpid()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            others = [pid for pid in _group_members(pgid) if pid != me]
            if not others:
                break
            for pid in others:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.02)
        try:
            os.killpg(pgid, signal.SIGKILL)
        finally:
            os._exit(1)
