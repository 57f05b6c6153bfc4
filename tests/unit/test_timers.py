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
    assert len(actor.asked) == 2 and timers.due("core") == 12.0
    first, second = actor.asked[0][1], actor.asked[1][1]
    assert timers.fired(second) == second and timers.due("core") is None
    assert timers.fired(first) is None         # superseded: the owner already handled its time
    assert timers.fired(second) is None        # once only
    assert timers.fired("tick") is None and timers.fired(Wake("other", None, second.token)) is None


def test_names_and_keys_are_independent_and_cancel_drops_the_pending_firing():
    actor = FakeActor()
    timers = Timers(actor, clock=lambda: 0.0)
    timers.after("restart", 1.0, key=("d1", 0))
    timers.after("restart", 2.0, key=("d1", 1))
    timers.after("status", 3.0)
    assert [p.key for _, p in actor.asked] == [("d1", 0), ("d1", 1), None]
    timers.cancel("status")
    assert timers.fired(actor.asked[2][1]) is None
    timers.after("status", 9.0)                # armed afresh after a cancel, however late
    assert timers.due("status") == 9.0 and len(actor.asked) == 4
    assert timers.fired(actor.asked[1][1]).key == ("d1", 1) and timers.due("restart", key=("d1", 0)) == 1.0


def test_a_due_time_in_the_past_still_waits_a_little():
    actor = FakeActor()
    timers = Timers(actor, clock=lambda: 10.0)
    timers.at("core", 9.0)
    assert actor.asked[0][0] > 0  # a zero delay would make Thespian skip its select()
    timers.at("core", None)
    assert len(actor.asked) == 1


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
