"""The processes of a running node, by role, read from /proc (for fault-injection tests).

Thespian forks every actor from its parent actor's process: the admin's children are the
logger and the node's top-level actors, the node registry's children are its engines (and
hubs, breakers, sessions), and an engine's children are its workers. Roles are told apart
by that tree, so no test needs the node to report pids.
"""

from __future__ import annotations

import os

from actors.core.procstat import live_stat
from actors.ops.procs import listening_pids, pids_in_group


def _ppid(pid: int) -> int | None:
    stat = live_stat(pid)
    return stat.ppid if stat is not None else None


def children(pgid: int) -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for pid in pids_in_group(pgid):
        parent = _ppid(pid)
        if parent is not None:
            tree.setdefault(parent, []).append(pid)
    return tree


def engines_and_workers(admin_port: int, pgid: int) -> dict[int, list[int]]:
    """{engine pid: [worker pids]}: the admin's grandchildren that have children of their own."""
    admin = next(p for p in listening_pids(admin_port) if os.getpgid(p) == pgid and _ppid(p) not in
                 pids_in_group(pgid))
    tree = children(pgid)
    found = {}
    for top in tree.get(admin, []):
        for grandchild in tree.get(top, []):
            if tree.get(grandchild):
                found[grandchild] = sorted(tree[grandchild])
    return found
