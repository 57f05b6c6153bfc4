"""A starved node keeps its place and its callers (docs/cluster.md, "A node that stood still").

Starvation made deterministic: SIGSTOP a node's registry (as a registry blocked in a send, or
not scheduled, would be) or every process of a node (a starved machine) for longer than the
failure timeout, then SIGCONT. A leader never drops itself; a member dropped for the missed
heartbeats is taken back by itself; a node outside the cluster serves its own deployments; and
every node says in its status what happened.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

from actors.ops.procs import cmdline, pids_in_group

from conftest import deployment, fresh_window_s, wait_for

HI = [{"role": "user", "content": "hi"}]
QUICK = {"heartbeat_s": 0.5, "failure_timeout_s": 2.0, "reregistration_s": 2}
STOP_S = 4.5   # more than twice the failure timeout, well under the client's 10 s route lookup


def _pids(node, role: str | None = None) -> list[int]:
    pids = pids_in_group(node.pgid)
    return [p for p in pids if role is None or role in " ".join(cmdline(p))]


@contextmanager
def _stopped(pids: list[int]):
    """SIGSTOP these processes for the block; SIGCONT whatever happens."""
    assert pids, "no such process: an actor's process is known by its title, which Thespian sets with setproctitle"
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


class Caller:
    """Calls a deployment over and over from a thread: every call's start time and outcome."""

    def __init__(self, client, model: str) -> None:
        self.client, self.model = client, model
        self.calls: list[tuple[float, float, str]] = []   # (started, ended, "ok" or the error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.client.complete(self.model, HI, max_tokens=2, timeout_s=20)
                outcome = "ok"
            except Exception as exc:  # noqa: BLE001 - recorded, asserted on
                outcome = f"{type(exc).__name__}: {exc}"
            self.calls.append((started, time.monotonic(), outcome))
            time.sleep(0.1)

    def __enter__(self) -> "Caller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def failures(self) -> list[str]:
        return [outcome for _, _, outcome in self.calls if outcome != "ok"]

    def started_within(self, start: float, end: float) -> int:
        return sum(1 for started, _, _ in self.calls if start <= started < end)


def _log(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.log"
    return path.read_text() if path.exists() else ""


def _members(client) -> dict[str, float]:
    return {m.node: m.last_seen_s for m in client.cluster_status(members_only=True).members}


def test_a_leader_whose_registry_or_whole_node_stood_still_never_drops_itself_and_serves_throughout(
        gateway, mock, tmp_path):
    window_s = fresh_window_s()
    strict = deployment(mock.url, "strict", workers=1, limits={"rpm": 1000, "window_s": window_s, "mode": "strict"})
    node, client = gateway([deployment(mock.url, "d1"), strict], name="n0", cluster=QUICK)
    me = f"n0@127.0.0.1:{node.admin_port}"
    wait_for(lambda: "n0" in _members(client), timeout_s=15, message="the leader in its own membership")
    assert client.complete("strict", HI, max_tokens=2).text

    # 1. Its registry alone stands still (blocked or not scheduled) while the registrar runs on
    #    and sees its heartbeats stop: what evicted the benchmark's node from its own cluster.
    with Caller(client, "d1") as caller:
        time.sleep(0.5)
        began = time.monotonic()
        with _stopped(_pids(node, "NodeRegistry")):
            time.sleep(STOP_S)
        resumed = time.monotonic()
        wait_for(lambda: caller.started_within(resumed, float("inf")) >= 3, timeout_s=30,
                 message="calls after the registry came back")
    assert caller.failures() == []
    assert caller.started_within(began, resumed) >= 1  # one waited for its route through the stop, and was served
    status = client.status()
    assert status.membership == "leader" and status.in_cluster
    wait_for(lambda: "stood still" in client.status().membership_note, timeout_s=10, message="the stall in status")
    assert _members(client)["n0"] < QUICK["failure_timeout_s"]  # heartbeating again
    assert client.complete("strict", HI, max_tokens=2).text  # its strict limiter is still its engines'

    # 2. Every process of the node stands still (a starved machine), the registrar too.
    with _stopped(_pids(node)):
        time.sleep(STOP_S)
    assert client.complete("d1", HI, max_tokens=2, timeout_s=20).text
    assert client.complete("strict", HI, max_tokens=2, timeout_s=20).text
    wait_for(lambda: "the registrar stood still" in _log(tmp_path, "n0"), timeout_s=10,
             message="the registrar's WARNING that it stood still")
    assert client.status().membership == "leader"

    log = _log(tmp_path, "n0")
    assert f"node {me} missed heartbeats" not in log   # never dropped from its own cluster
    assert "leader unreachable" not in log
    assert "node n0 stood still for" in log              # each stall said once, as a WARNING


def test_a_member_dropped_while_its_registry_stood_still_serves_throughout_and_is_taken_back(gateway, mock, tmp_path):
    leader, leader_client = gateway([deployment(mock.url, "d1")], name="n0", cluster=QUICK)
    member, client = gateway([deployment(mock.url, "d1")], name="m1", cluster=QUICK,
                             leader=f"127.0.0.1:{leader.admin_port}")
    wait_for(lambda: set(_members(leader_client)) == {"n0", "m1"}, timeout_s=20, message="the member to join")
    me = f"m1@127.0.0.1:{member.admin_port}"

    with Caller(client, "d1") as caller:
        with _stopped(_pids(member, "NodeRegistry")):
            # The registrar runs on: the member's heartbeats stop, so it is dropped, as it should be.
            wait_for(lambda: set(_members(leader_client)) == {"n0"}, timeout_s=STOP_S * 2,
                     message="the registrar to drop the silent member")
            time.sleep(0.5)
        resumed = time.monotonic()
        # Back by itself, at its next heartbeat: no restart, no operator.
        wait_for(lambda: set(_members(leader_client)) == {"n0", "m1"}, timeout_s=15, interval_s=0.2,
                 message="the member to be taken back")
        wait_for(lambda: caller.started_within(resumed, float("inf")) >= 3, timeout_s=30,
                 message="calls after the member's registry came back")
    assert caller.failures() == []
    status = client.status()
    assert status.in_cluster and status.membership == "member"
    wait_for(lambda: "dropped this node and took it back" in client.status().membership_note, timeout_s=10,
             message="the member's status to say it was dropped and taken back")
    leader_log = _log(tmp_path, "n0")
    assert f"node {me} missed heartbeats" in leader_log
    wait_for(lambda: f"({me}) is back in the cluster: back" in _log(tmp_path, "n0"), timeout_s=10,
             message="the registrar's line that the member is back")
    assert "leader unreachable" not in _log(tmp_path, "m1")  # its own stall was not its leader's silence


def test_a_member_whose_leader_stood_still_serves_its_own_deployments_outside_and_rejoins(gateway, mock, tmp_path):
    leader, leader_client = gateway([deployment(mock.url, "d1")], name="n0", cluster=QUICK)
    member, client = gateway([deployment(mock.url, "d1")], name="m1", cluster=QUICK,
                             leader=f"127.0.0.1:{leader.admin_port}")
    wait_for(lambda: set(_members(leader_client)) == {"n0", "m1"}, timeout_s=20, message="the member to join")

    with Caller(client, "d1") as caller:
        with _stopped(_pids(leader)):
            wait_for(lambda: not client.status().in_cluster, timeout_s=STOP_S * 3, interval_s=0.1,
                     message="the member to find itself outside")
            outside = time.monotonic()
            assert client.status().membership.startswith("not in cluster: leader n0 unreachable")
            # Outside the cluster, its route lookups and its own engines do not care.
            assert client.routes("d1", refresh=True)
            wait_for(lambda: caller.started_within(outside, float("inf")) >= 3, timeout_s=20,
                     message="calls served while outside the cluster")
        wait_for(lambda: client.status().in_cluster, timeout_s=30, interval_s=0.2,
                 message="the member to rejoin once its leader runs again")
        assert "back in the cluster led by n0 after" in client.status().membership_note
    assert caller.failures() == []
    wait_for(lambda: set(_members(leader_client)) == {"n0", "m1"}, timeout_s=15, message="both in the membership")
    log = _log(tmp_path, "n0")
    assert f"node n0@127.0.0.1:{leader.admin_port} missed heartbeats" not in log  # the leader never dropped itself
