"""The member table and failure detector on a fake clock."""

from actors.core.membership import MemberTable, Verdict, node_id


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def table(clock, failure_timeout_s=3.0, confirm_s=1.0):
    return MemberTable(failure_timeout_s, confirm_s, clock=clock)


def test_one_name_on_three_hosts_is_three_members():
    clock = Clock()
    members = table(clock)
    ids = [node_id("demo", host, 1900) for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3")]
    assert len(set(ids)) == 3
    assert [members.heartbeat(i, f"inc{n}", n).verdict for n, i in enumerate(ids)] == [Verdict.JOINED] * 3
    assert [m[1] for m in members.members()] == [0, 1, 2]
    assert node_id("demo", "", 0) == "demo@?:?"


def test_a_silent_member_is_dropped_after_the_failure_timeout_and_not_before():
    clock = Clock()
    members = table(clock)
    members.heartbeat("a", "1", "A")
    members.heartbeat("b", "1", "B")
    clock.t += 2.0
    members.heartbeat("a", "1", "A")
    clock.t += 0.9
    assert members.sweep() == [] and len(members) == 2
    clock.t += 0.2  # b silent 3.1 s > 3 s; a silent 1.1 s
    assert members.sweep() == ["b"]
    assert "b" not in members and "a" in members
    assert abs(members.members()[0][2] - 1.1) < 1e-9


def test_a_second_live_claimant_of_an_id_is_refused_while_the_holder_keeps_talking():
    clock = Clock()
    members = table(clock)
    members.heartbeat("demo@h:1900", "old", "first")
    clock.t += 0.1
    held = members.heartbeat("demo@h:1900", "new", "second")
    assert held.verdict is Verdict.HELD and not held.changed
    clock.t += 0.4
    assert members.heartbeat("demo@h:1900", "old", "first").verdict is Verdict.KNOWN
    clock.t += 5.0  # however long it waits: the holder spoke after the claim
    members.heartbeat("demo@h:1900", "old", "first")
    refused = members.heartbeat("demo@h:1900", "new", "second")
    assert refused.verdict is Verdict.REFUSED
    assert "already held by a live node" in refused.reason and "--name" in refused.reason
    assert [m[1] for m in members.members()] == ["first"]


def test_a_restarted_node_replaces_its_silent_predecessor_after_the_confirmation_time():
    clock = Clock()
    members = table(clock)
    members.heartbeat("n@h:1", "old", "before")
    clock.t += 0.5  # killed right after this heartbeat; restarted
    assert members.heartbeat("n@h:1", "new", "after").verdict is Verdict.HELD
    clock.t += 0.6
    assert members.heartbeat("n@h:1", "new", "after").verdict is Verdict.HELD  # not yet confirm_s since the claim
    clock.t += 0.5
    replaced = members.heartbeat("n@h:1", "new", "after")
    assert replaced.verdict is Verdict.REPLACED and replaced.changed
    assert [m[1] for m in members.members()] == ["after"]
    assert members.heartbeat("n@h:1", "new", "after").verdict is Verdict.KNOWN


def test_a_refused_claimant_joins_once_the_holder_is_gone():
    clock = Clock()
    members = table(clock)
    members.heartbeat("x", "old", 1)
    clock.t += 0.1
    members.heartbeat("x", "new", 2)
    clock.t += 0.1
    members.heartbeat("x", "old", 1)
    assert members.heartbeat("x", "new", 2).verdict is Verdict.REFUSED
    clock.t += 3.5
    assert members.sweep() == ["x"]
    assert members.heartbeat("x", "new", 2).verdict is Verdict.JOINED


def test_a_gathering_answers_once_everyone_answered_and_ignores_strangers():
    from actors.core.gather import Gathering

    gathering = Gathering(["a", "b"], ["waiter"])
    assert not gathering.add("stranger", 1) and not gathering.add("a", 2)
    assert not gathering.add("a", 3)  # a repeat is not a second part
    assert gathering.add("b", 4) and gathering.done and gathering.parts == [2, 4]
