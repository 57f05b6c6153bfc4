"""The one reader of ``/proc/<pid>/stat``: the parent, the process group, the start time, and
one rule for which processes are alive.

A process that has exited but was not reaped yet is a zombie (state ``Z``; ``X`` while the
kernel tears it down): it holds no port, runs nothing and ignores signals, so it is never
alive here. The command name (field 2) may hold spaces and parentheses, so the fields are
read after its last ``)``. Pids are reused: a pid plus its start time names one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ProcStat", "parse_stat", "read_stat", "live_stat", "pids", "group_members"]

PROC = "/proc"
_GONE = ("Z", "X")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    state: str          # R, S, D, T, Z, X, ...
    ppid: int
    pgrp: int
    start_ticks: int    # clock ticks since boot when the process started

    @property
    def alive(self) -> bool:
        return self.state not in _GONE


def parse_stat(pid: int, text: str) -> ProcStat | None:
    """The fields of one ``/proc/<pid>/stat`` text, or None when it is not one."""
    fields = text[text.rfind(")") + 2:].split()
    if len(fields) < 20:
        return None
    try:
        return ProcStat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[19]))
    except ValueError:
        return None


def read_stat(pid: int, proc: str = PROC) -> ProcStat | None:
    """``pid``'s stat, zombies included, or None when there is no such process."""
    try:
        with open(f"{proc}/{pid}/stat") as fh:
            text = fh.read()
    except (OSError, ValueError):
        return None
    return parse_stat(pid, text)


def live_stat(pid: int, proc: str = PROC) -> ProcStat | None:
    """``pid``'s stat while it is alive (not a zombie), else None."""
    stat = read_stat(pid, proc)
    return stat if stat is not None and stat.alive else None


def pids(proc: str = PROC) -> list[int]:
    """Every pid in ``proc``."""
    return [int(entry) for entry in os.listdir(proc) if entry.isdigit()]


def group_members(pgid: int, proc: str = PROC) -> list[int]:
    """The live processes of process group ``pgid``."""
    found = []
    for pid in pids(proc):
        stat = live_stat(pid, proc)
        if stat is not None and stat.pgrp == pgid:
            found.append(pid)
    return found
