"""What the project relies on Thespian 4.0.1 doing, pinned where the in-process base shows it
(docs/architecture.md, "The Thespian contract", lists every behaviour and its test; the
multiprocTCPBase ones are pinned in the process and cluster tiers)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from thespian.actors import (Actor, ActorExitRequest, ChildActorExited, PoisonMessage, ThespianWatch, WakeupMessage,
                             WatchMessage)

from actors.errors import ConfigError
from actors.runtime.wake import watch_supported
from actors.security.thespian_hooks import THESPIAN_VERSION, UNTESTED_ENV, check_version


def test_the_installed_thespian_is_the_one_the_hooks_were_written_for():
    assert check_version() is None
    with pytest.raises(ConfigError) as refused:
        check_version("4.1.0", environ={})
    assert "4.1.0" in str(refused.value) and THESPIAN_VERSION in str(refused.value)
    warning = check_version("4.1.0", environ={UNTESTED_ENV: "1"})
    assert warning is not None and "The Thespian contract" in warning


class Probe(Actor):
    """Records what Thespian hands it; ``("do", what)`` makes it act."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.failures = 0

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        if msg == "seen?":
            self.send(sender, list(self.seen))
        elif msg == "two wakeups":
            self.wakeupAfter(timedelta(milliseconds=20), payload="first")
            self.wakeupAfter(timedelta(milliseconds=10), payload="second")   # no way to cancel the first
        elif msg == "fail":
            self.failures += 1
            raise RuntimeError("a handler bug")
        elif msg == "child":
            self.seen.append(("child", self.createActor(Probe)))
        elif msg == "watch":
            self.seen.append(("watch supported", watch_supported(self)))
            return ThespianWatch([0])
        elif isinstance(msg, WakeupMessage):
            self.seen.append(("wakeup", msg.payload))
        elif isinstance(msg, ChildActorExited):
            self.seen.append(("exited", msg.childAddress))
        elif isinstance(msg, WatchMessage):
            self.seen.append(("watched", msg.ready))
        elif not isinstance(msg, ActorExitRequest):
            self.seen.append(msg)
        return None


def _wait_for(asys, actor, condition, timeout_s: float = 5.0) -> list[Any]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        seen = asys.ask(actor, "seen?", 1)
        if condition(seen):
            return seen
        asys.listen(0.02)
    raise AssertionError(f"not within {timeout_s}s: {asys.ask(actor, 'seen?', 1)}")


def test_a_wakeup_cannot_be_cancelled_so_a_superseded_one_still_fires(asys):
    """Why every actor's timers go through runtime/timers.py, which drops the superseded ones."""
    probe = asys.createActor(Probe)
    asys.tell(probe, "two wakeups")
    seen = _wait_for(asys, probe, lambda s: len(s) >= 2)
    assert seen == [("wakeup", "second"), ("wakeup", "first")]


def test_a_handler_that_raises_on_a_message_twice_returns_it_to_its_sender_as_a_poison_message(asys):
    """Why the engine handles PoisonMessage (a worker that failed on a Dispatch) and ends the request."""
    probe = asys.createActor(Probe)
    reply = asys.ask(probe, "fail", 5)
    assert isinstance(reply, PoisonMessage) and reply.poisonMessage == "fail"
    assert asys.ask(probe, "seen?", 1) == []      # the actor survives its bug


def test_a_parent_hears_when_its_child_exits(asys):
    """Why the engine learns of a dead worker at once (ChildActorExited), without polling."""
    parent = asys.createActor(Probe)
    asys.tell(parent, "child")
    (_, child), = _wait_for(asys, parent, lambda s: len(s) >= 1)
    asys.tell(child, ActorExitRequest())
    seen = _wait_for(asys, parent, lambda s: len(s) >= 2)
    assert seen[1] == ("exited", child)


def test_the_in_process_base_has_no_watches(asys):
    """Why the worker polls its reader on simpleSystemBase (and is woken by a pipe on multiprocTCPBase)."""
    probe = asys.createActor(Probe)
    asys.tell(probe, "watch")
    asys.listen(0.1)
    assert asys.ask(probe, "seen?", 1) == [("watch supported", False)]   # and no WatchMessage came


def test_the_shutdown_noise_filter_drops_only_the_stale_pending_create():
    import logging

    from actors.ops.system import ShutdownNoiseFilter

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("Thespian", logging.ERROR, __file__, 1, message, None, None)

    noise = ShutdownNoiseFilter()
    assert not noise.filter(record("Pending Actor create for ActorAddr-(T|:1234) failed (3585): shutting down"))
    assert noise.filter(record("Pending Actor create for ActorAddr-(T|:1234) failed (3586)"))
    assert noise.filter(record("an actor failed"))


def test_the_in_process_bases_private_endpoint_runs_nothing_so_the_client_brings_its_own(asys):
    """Why InProcessLink's endpoints are ``thespian_hooks.InProcessEndpoint``, not ``private()``:
    on simpleSystemBase a private endpoint's send waits for another thread to run the actors
    (and its ``listen`` with a timeout blocks for good, not exercised here)."""
    from actors.security.thespian_hooks import InProcessEndpoint
    from harness import actor_instance

    probe = asys.createActor(Probe)
    with asys.private() as private:
        private.tell(probe, "child")
        assert actor_instance(asys, probe).seen == []          # queued, not delivered
    endpoint = InProcessEndpoint(asys)
    (made,) = endpoint.ask(probe, "seen?", 5)                 # ours runs the queue, then its own ask
    assert made[0] == "child"
    # An ask to an actor that exited returns None at once, as the TCP transport's does.
    asys.tell(made[1], ActorExitRequest())
    started = time.monotonic()
    assert endpoint.ask(made[1], "seen?", 30) is None
    assert time.monotonic() - started < 10                    # not its 30 s timeout
    endpoint.close()


def test_the_selector_thespians_loop_gets_answers_as_the_standard_one_does():
    """``TCPTransport`` builds a selector on every pass of its loop; ours makes one ``poll`` call
    instead of epoll's call per descriptor. Ready, not ready, a hung-up pipe and a closed
    descriptor (EBADF, which Thespian handles as it did epoll's) come out as PollSelector says."""
    import errno
    import os
    import selectors

    from actors.security.thespian_hooks import _TurnSelectors

    readable_r, readable_w = os.pipe()
    idle_r, idle_w = os.pipe()
    hung_r, hung_w = os.pipe()
    closed_r, closed_w = os.pipe()
    os.write(readable_w, b"x")
    os.close(hung_w)
    os.close(closed_r)
    try:
        def answers(make: Any) -> list[tuple[int, int]]:
            sel = make()
            for fd in (readable_r, idle_r, hung_r):
                sel.register(fd, selectors.EVENT_READ)
            for fd in (readable_w, idle_w):
                sel.register(fd, selectors.EVENT_WRITE)
            try:
                return sorted((key.fd, events) for key, events in sel.select(0))
            finally:
                sel.close()

        ours = answers(_TurnSelectors.DefaultSelector)
        assert ours == answers(selectors.PollSelector)
        assert ours == sorted([(readable_r, selectors.EVENT_READ), (hung_r, selectors.EVENT_READ),
                               (readable_w, selectors.EVENT_WRITE), (idle_w, selectors.EVENT_WRITE)])
        sel = _TurnSelectors.DefaultSelector()
        sel.register(closed_r, selectors.EVENT_READ)
        with pytest.raises(OSError) as bad:
            sel.select(0)
        assert bad.value.errno == errno.EBADF
        with pytest.raises(ValueError):
            _TurnSelectors.DefaultSelector().register(-1, selectors.EVENT_READ)
        started = time.monotonic()
        quiet = _TurnSelectors.DefaultSelector()
        quiet.register(idle_r, selectors.EVENT_READ)
        assert quiet.select(0.05) == [] and time.monotonic() - started >= 0.04   # waits out its timeout
    finally:
        for fd in (readable_r, readable_w, idle_r, idle_w, hung_r, closed_w):
            os.close(fd)
