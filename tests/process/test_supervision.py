"""A SIGKILLed engine under load: every request ends once, the node restarts the engine, status says so."""

from __future__ import annotations

import os
import signal
import threading

from actors import GatewayClient
from actors import errors as E
from actors.ops.procs import listening_pids, parent_pid, pids_in_group
from actors.types import Completed

from conftest import deployment, wait_for


def _pid_of(engine) -> int:
    return wait_for(lambda: listening_pids(engine.addressDetails.sockname[1]), message="the engine's pid")[0]


def _call(gw, i, outcomes, progress):
    """Streams of about 6 s (none can end before the kill, even on a loaded machine); the even ones
    not idempotent (never sent twice)."""
    try:
        with gw.stream("d1", [{"role": "user", "content": f"[[mock drip_ms=100 words=60]] s{i}"}],
                       idempotent=bool(i % 2), timeout_s=60) as stream:
            for _ in stream:
                progress[i] = progress.get(i, 0) + 1
        outcomes[i] = stream.result
    except E.InferenceError as exc:
        outcomes[i] = exc


def test_a_killed_engine_is_restarted_and_every_request_it_held_ends_once(gateway, mock):
    node, gw = gateway([deployment(mock.url, "d1", workers=2, queue_capacity=64), deployment(mock.url, "d2")])
    # A second client whose route cache outlives the crash: it will send to the dead address.
    stale = GatewayClient(node.admin_port, timeout_s=30, route_ttl_s=3600)
    try:
        old = gw.routes("d1")[0].engine
        assert stale.routes("d1")[0].engine == old
        outcomes: dict[int, object] = {}
        progress: dict[int, int] = {}
        threads = [threading.Thread(target=_call, args=(gw, i, outcomes, progress)) for i in range(8)]
        for t in threads:
            t.start()
        wait_for(lambda: len(progress) >= 2, message="two streams under way")
        wait_for(lambda: gw.status().engines[0].queued >= 1, message="calls queued behind them")
        victim = _pid_of(old)
        orphans = [pid for pid in pids_in_group(node.pgid) if parent_pid(pid) == victim]
        assert len(orphans) == 2  # its workers
        os.kill(victim, signal.SIGKILL)
        # Streams already ended are no evidence either way (their terminal left before the kill).
        at_kill = {i: n for i, n in progress.items() if i not in outcomes}
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
        assert sorted(outcomes) == list(range(8))  # every call ended, with one outcome each
        kinds = {type(o).__name__ for o in outcomes.values()}
        assert kinds <= {"Completed", "EngineCrashed"}, outcomes
        for i, outcome in outcomes.items():
            if at_kill.get(i):  # tokens had reached the caller: never resent, not retryable
                assert isinstance(outcome, E.EngineCrashed) and not outcome.retryable, (i, outcome)
            elif isinstance(outcome, E.EngineCrashed):  # nothing streamed: the caller may retry
                assert outcome.retryable and progress.get(i, 0) == 0, (i, outcome)
            elif i % 2:  # idempotent and nothing streamed yet: sent again to the new engine, whole
                assert isinstance(outcome, Completed) and progress[i] == outcome.chunks, (i, outcome)
        assert sum(isinstance(o, E.EngineCrashed) for o in outcomes.values()) >= 2
        # The deployment serves again, from a new engine, and status tells the story.
        new = wait_for(lambda: [e.engine for e in gw.routes("d1", refresh=True) if e.engine != old],
                       message="the route to move")[0]
        assert gw.complete("d1", [{"role": "user", "content": "after"}], max_tokens=2).text
        status = gw.status()
        line = next(s for s in status.supervision if s["deployment"] == "d1")
        assert line["restarts"] == 1 and line["state"] == "running"
        assert [e.deployment for e in status.engines] == ["d1", "d2"]
        # A call sent to the dead address (from a stale route cache) does not vanish:
        # the node says that engine is gone, and the call goes to the new one.
        result = stale.complete("d1", [{"role": "user", "content": "stale route"}], max_tokens=2, timeout_s=20)
        assert isinstance(result, Completed)
        assert stale.routes("d1")[0].engine == new
        # The dead engine's workers do not live on; the new engine has its own.
        wait_for(lambda: not set(orphans + [victim]) & set(pids_in_group(node.pgid)), timeout_s=15,
                 message="the old engine's workers to exit")
        new_pid = _pid_of(new)
        assert len([pid for pid in pids_in_group(node.pgid) if parent_pid(pid) == new_pid]) == 2
        # The other deployment never noticed.
        assert gw.complete("d2", [{"role": "user", "content": "d2"}], max_tokens=2).text
    finally:
        stale.close()
