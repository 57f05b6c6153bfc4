"""The one-pending-wakeup helper: earliest due wins, stale firings are recognised."""

from __future__ import annotations

from actors.runtime.timers import Alarm, Wake


class FakeActor:
    def __init__(self):
        self.asked = []

    def wakeupAfter(self, delay, payload):
        self.asked.append((delay.total_seconds(), payload))


def test_a_later_request_does_nothing_and_an_earlier_one_supersedes():
    actor, now = FakeActor(), [10.0]
    alarm = Alarm(actor, "engine", clock=lambda: now[0])
    alarm.at(15.0)
    alarm.at(20.0)
    assert len(actor.asked) == 1 and actor.asked[0][0] == 5.0
    alarm.at(12.0)
    assert len(actor.asked) == 2 and alarm.due == 12.0
    first, second = actor.asked[0][1], actor.asked[1][1]
    assert alarm.fired(second) and alarm.due is None
    assert not alarm.fired(first)  # superseded: the owner already handled its time
    assert not alarm.fired("tick") and not alarm.fired(Wake("other", second.token))


def test_a_due_time_in_the_past_still_waits_a_little():
    actor = FakeActor()
    alarm = Alarm(actor, "engine", clock=lambda: 10.0)
    alarm.at(9.0)
    assert actor.asked[0][0] > 0  # a zero delay would make Thespian skip its select()
    alarm.at(None)
    assert len(actor.asked) == 1
