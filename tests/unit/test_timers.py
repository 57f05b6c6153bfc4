"""Every actor's timers (runtime/timers.py): named, earliest due wins, stale firings dropped."""

from __future__ import annotations

import time
from typing import Any

from thespian.actors import ActorExitRequest

from actors.runtime.base import GatewayActor
from actors.runtime.timers import Timers, Wake


class FakeActor:
    def __init__(self):
        self.asked = []

    def wakeupAfter(self, delay, payload):
        self.asked.append((delay.total_seconds(), payload))


def test_a_later_request_does_nothing_and_an_earlier_one_supersedes():
    actor, now = FakeActor(), [10.0]
    timers = Timers(actor, clock=lambda: now[0])
    timers.at("core", 15.0)
    timers.after("core", 10.0)                 # due at 20: later than the pending one
    assert len(actor.asked) == 1 and actor.asked[0][0] == 5.0
    timers.at("core", 12.0)
    assert len(actor.asked) == 2 and actor.asked[1][0] == 2.0 and timers.due("core") == 12.0
    first, second = actor.asked[0][1], actor.asked[1][1]
    now[0] = 12.0
    (wake,) = timers.fired(second)
    assert wake.name == "core" and timers.current(wake) and timers.due("core") is None
    now[0] = 15.0
    assert timers.fired(first) == []           # superseded: the owner already handled its time
    assert not timers.current(wake)            # once only
    assert timers.fired("tick") == [] and timers.fired(Wake("core", None, wake.token)) == []


def test_names_and_keys_are_independent_and_cancel_drops_the_pending_one():
    actor, now = FakeActor(), [0.0]
    timers = Timers(actor, clock=lambda: now[0])
    timers.after("restart", 1.0, key=("d1", 0))
    timers.after("restart", 2.0, key=("d1", 1))
    timers.after("status", 3.0)
    assert len(actor.asked) == 1               # one wakeup, for the earliest
    timers.cancel("status")
    now[0] = 1.0
    assert [(w.name, w.key) for w in timers.fired(actor.asked[0][1])] == [("restart", ("d1", 0))]
    assert len(actor.asked) == 2 and actor.asked[1][0] == 1.0      # then one for the next
    now[0] = 2.0
    assert [(w.name, w.key) for w in timers.fired(actor.asked[1][1])] == [("restart", ("d1", 1))]
    assert len(actor.asked) == 2               # the cancelled one asks for nothing
    timers.after("status", 9.0)                # armed afresh after a cancel, however late
    assert timers.due("status") == 11.0 and len(actor.asked) == 3


def test_a_due_time_in_the_past_still_waits_a_little():
    actor = FakeActor()
    timers = Timers(actor, clock=lambda: 10.0)
    timers.at("core", 9.0)
    assert actor.asked[0][0] > 0  # a zero delay would make Thespian skip its select()
    timers.at("core", None)
    assert len(actor.asked) == 1


def test_many_timers_ask_thespian_for_one_wakeup_and_fire_in_due_order():
    # A worker process arms a deadline and a coalescing timer per slot: Thespian keeps each
    # wakeup in a sorted list it walks on every turn of the actor's loop.
    actor, now = FakeActor(), [0.0]
    timers = Timers(actor, clock=lambda: now[0])
    for slot in reversed(range(100)):
        timers.at("deadline", 60.0 + slot, key=slot)
    assert len(actor.asked) == 100             # each earlier than the one before: superseding
    later = FakeActor()
    timers = Timers(later, clock=lambda: now[0])
    for slot in range(100):
        timers.at("deadline", 60.0 + slot, key=slot)
        timers.at("flush", 0.02 * (slot + 1), key=slot)
    assert [delay for delay, _ in later.asked] == [60.0, 0.02]   # the first, then the first flush: no more
    now[0] = 200.0
    wakes = timers.fired(later.asked[1][1])
    assert [(w.name, w.key) for w in wakes] == ([("flush", k) for k in range(100)] + [("deadline", k) for k in range(100)])


def test_a_timer_cancelled_by_a_handler_before_it_in_the_same_firing_is_not_handled():
    actor, now = FakeActor(), [0.0]
    timers = Timers(actor, clock=lambda: now[0])
    timers.at("a", 1.0)
    timers.at("b", 1.5)
    now[0] = 2.0
    first, second = timers.fired(actor.asked[0][1])
    assert timers.current(first)
    timers.cancel("b")                         # what a's handler did
    assert not timers.current(second)


class Ticker(GatewayActor):
    """Counts its ticks; a second arm while one is pending does not add a wakeup."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[Any] = []

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if msg == "start":
            for _ in range(5):
                self.timers.after("tick", 0.01, key="k")
            self.timers.after("stale", 0.01)
            self.timers.cancel("stale")
        elif msg == "ticks?":
            self.send(sender, list(self.ticks))
        elif not isinstance(msg, ActorExitRequest):
            super().receiveMessage(msg, sender)

    def timer_tick(self, key: Any) -> None:
        self.ticks.append(key)

    def timer_stale(self, key: Any) -> None:  # cancelled: never called
        self.ticks.append("stale")


def test_an_actor_is_called_once_per_current_timer_through_the_base(asys):
    ticker = asys.createActor(Ticker)
    asys.tell(ticker, "start")
    end = time.monotonic() + 5
    while not asys.ask(ticker, "ticks?", 1) and time.monotonic() < end:
        asys.listen(0.02)
    asys.listen(0.1)                           # time for any further (wrong) firing
    assert asys.ask(ticker, "ticks?", 1) == ["k"]


class Flaky(GatewayActor):
    """Its first timer's handler raises; the second must still be handled."""

    def __init__(self) -> None:
        super().__init__()
        self.handled: list[str] = []

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if msg == "start":
            self.timers.after("boom", 0.01)
            self.timers.after("after_boom", 0.01)
        elif msg == "handled?":
            self.send(sender, list(self.handled))
        elif not isinstance(msg, ActorExitRequest):
            super().receiveMessage(msg, sender)

    def timer_boom(self, key: Any) -> None:
        raise RuntimeError("a timer handler bug")

    def timer_after_boom(self, key: Any) -> None:
        self.handled.append("after_boom")


def test_a_timer_handler_that_raises_does_not_lose_the_timers_due_with_it(asys):
    flaky = asys.createActor(Flaky)
    asys.tell(flaky, "start")
    end = time.monotonic() + 5
    while not asys.ask(flaky, "handled?", 1) and time.monotonic() < end:
        asys.listen(0.02)
    assert asys.ask(flaky, "handled?", 1) == ["after_boom"]
