"""Cluster status from a host that runs no node of the cluster."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from thespian.actors import ActorSystem

from actors.errors import InternalError
from actors.ops.procs import admin_pgid, kill_group, pids_in_group, wait_until
from actors.runtime.cluster import LeaderLocator
from actors.runtime.protocol import ClusterStatus, ClusterStatusRequest, Locate, RegistrarIs
from actors.security import wire

def cluster_status_from(leader: str, timeout_s: float = 20.0, advertise: str | None = None,
                        keyring: Any = wire.FROM_ENVIRONMENT) -> ClusterStatus:
    """Ask a cluster for its status from a host that runs no node of it.

    Thespian clients talk to their *local* admin, so this starts a short-lived admin that
    joins the leader's convention, places a LeaderLocator on the leader to find the
    registrar, asks it, and shuts its admin down again.
    """
    keyring = wire.resolve_keyring(keyring)
    wire.require_secret(keyring, "a status client joining the convention",
                        {"leader": leader.rpartition(":")[0], "advertised address": advertise})
    wire.install(keyring)  # before the short-lived admin is forked from this process
    if advertise:
        os.environ["THESPIAN_BASE_IPADDR"] = advertise
    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": port, "Convention Address.IPv4": leader,
                                            "atomr-client": True}, transientUnique=True)
    pgid = admin_pgid(port)
    try:
        deadline = time.monotonic() + timeout_s
        located = None
        while located is None and time.monotonic() < deadline:
            try:
                located = asys.ask(asys.createActor(LeaderLocator), Locate(), 3)
            except Exception:  # noqa: BLE001 - not joined yet: Thespian finds no leader to place it on
                located = None
            if not isinstance(located, RegistrarIs):
                located = None
                time.sleep(0.2)
        if located is None:
            raise InternalError(f"could not reach the leader at {leader} within {timeout_s:g}s")
        reply = asys.ask(located.registrar, ClusterStatusRequest(), max(1.0, deadline - time.monotonic()))
        if not isinstance(reply, ClusterStatus):
            raise InternalError(f"the registrar at {leader} did not answer")
        return reply
    finally:
        asys.shutdown()
        if pgid is not None and not wait_until(lambda: not pids_in_group(pgid), 10):
            kill_group(pgid)

