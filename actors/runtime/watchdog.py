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
from typing import Any

from actors.core.procstat import group_members, live_stat
from actors.runtime.base import GatewayActor
from actors.runtime.logs import logger

log = logger("atomr.watchdog")
LOG_GRACE_S = 0.3   # for the last log line to reach the logger before the group is killed

__all__ = ["LauncherWatchdog", "WatchLauncher", "Watching"]


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
            self.timers.after("check", msg.interval_s)

    def timer_check(self, _: Any) -> None:
        watch = self.watch
        assert watch is not None, "the check timer is set by WatchLauncher"
        why = self._gone(watch)
        if why is None:
            self.timers.after("check", watch.interval_s)
            return
        log.warning("%s: stopping this node (process group %d)", why, os.getpgid(0))
        # The line is a message to the logger process, sent once this handler returns.
        self.timers.after("kill", LOG_GRACE_S)

    def timer_kill(self, _: Any) -> None:
        self._kill_group()

    def _gone(self, watch: WatchLauncher) -> str | None:
        launcher = live_stat(watch.pid)
        if launcher is None or launcher.start_ticks != watch.start_ticks:
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
            others = [pid for pid in group_members(pgid) if pid != me]
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
