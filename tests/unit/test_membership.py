"""The member table and failure detector on a fake clock."""

from actors.core.membership import Heard, MemberTable, Standing, Verdict, node_id


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


# -- one node's own standing ----------------------------------------------------------------

def standing(clock, leader=False):
    return Standing(leader, failure_timeout_s=5.0, retry_s=3.0, warn_every_s=30.0, clock=clock)


def tick(clock, node, seconds, step=0.5):
    """Ticks every ``step`` (as the registry's heartbeat does): (retries, warnings) in that time."""
    retries, warnings = 0, []
    end = clock.t + seconds
    while clock.t < end - 1e-9:
        clock.t += step
        retries += node.retry_due()
        warning = node.warning_due()
        if warning:
            warnings.append((round(clock.t - 1000.0, 1), warning))
    return retries, warnings


def test_a_member_not_yet_joined_says_so_retries_every_period_and_warns_at_a_bounded_rate():
    clock = Clock()
    node = standing(clock)
    assert not node.in_cluster and node.describe().startswith("not in cluster: joining")
    retries, warnings = tick(clock, node, 100.0)
    assert retries == 33  # every 3 s, from 3 s on: 3, 6, ..., 99
    # the first after the failure timeout, then one per 30 s, however often it is asked
    assert [at for at, _ in warnings] == [5.0, 35.0, 65.0, 95.0]
    assert warnings[0][1] == "not in cluster: joining, no membership from the leader in 5s since start"
    assert node.heard("n0") == 100.0  # joined after 100 s outside
    assert node.in_cluster and node.describe() == "member"
    assert tick(clock, node, 100.0) == (0, [])  # in the cluster: no retries, no warnings


def test_a_member_whose_leader_goes_quiet_is_outside_until_it_hears_again():
    clock = Clock()
    node = standing(clock)
    assert node.heard("n0") == 0.0 and node.in_cluster  # quickly: a join, said once
    assert node.heard("n0") is None  # a heartbeat's answer like any other
    clock.t += 5.0
    assert node.silent_for() is None  # not longer than the failure timeout yet
    clock.t += 0.5
    assert node.silent_for() == 5.5
    node.lost("no answer from the registrar for 5.5s")
    assert node.silent_for() is None  # reported once
    assert not node.in_cluster
    assert node.describe() == "not in cluster: leader n0 unreachable for 0s (no answer from the registrar for 5.5s)"
    assert node.retry_due() and not node.retry_due()  # at once, then every retry_s
    retries, warnings = tick(clock, node, 31.0)
    assert retries == 10 and [at for at, _ in warnings] == [35.5]  # 30 s after the loss (logged as it happened)
    assert node.since_heard() == 36.5
    assert node.heard("n0") == 31.0 and node.in_cluster


def test_the_leader_is_always_in_and_a_refused_member_says_why_without_repeating_it():
    clock = Clock()
    leader = standing(clock, leader=True)
    assert leader.in_cluster and leader.describe() == "leader"
    leader.heard("n0")
    clock.t += 6.0
    assert leader.silent_for() == 6.0
    leader.lost("its registrar is silent")
    assert leader.in_cluster and leader.silent_for() is None and tick(clock, leader, 60.0) == (0, [])
    member = standing(clock)
    assert member.refuse("node id n1@h:1 is already held") and not member.refuse("node id n1@h:1 is already held")
    assert not member.in_cluster and member.describe() == "refused: node id n1@h:1 is already held"
    assert tick(clock, member, 60.0)[1] == []  # the refusal is logged once, as an ERROR, by the registry


# -- starvation: a leader never drops itself; a stall is nobody's silence ---------------------

def sweeping(clock, members, until, every=1.0):
    """Sweeps every ``every`` until ``until`` (as the registrar's timer does): {time: dropped}."""
    dropped = {}
    while clock.t < until - 1e-9:
        clock.t += every
        gone = members.sweep()
        if gone:
            dropped[round(clock.t - 1000.0, 1)] = gone
    return dropped


def test_the_leaders_own_node_is_never_dropped_however_late_its_heartbeats():
    clock = Clock()
    members = MemberTable(3.0, 1.0, clock=clock)
    members.pin("n0@h:1")
    members.heartbeat("n0@h:1", "1", "leader")
    members.heartbeat("m1@h:2", "1", "member")
    members.sweep()
    assert sweeping(clock, members, 1060.0) == {4.0: ["m1@h:2"]}  # the member after 3 s of silence, the leader never
    assert [(key, round(age)) for key, _, age in members.members()] == [("n0@h:1", 60)]  # its age still shows it


def test_a_stall_of_the_registrar_counts_against_no_one_and_real_silence_still_does():
    clock = Clock()
    members = MemberTable(3.0, 1.0, clock=clock, sweep_every_s=1.0)
    members.sweep()
    for _ in range(2):  # both heartbeat every second, swept on time
        members.heartbeat("a", "1", "A")
        members.heartbeat("b", "1", "B")
        clock.t += 1.0
        assert members.sweep() == [] and members.stalled_s == 0.0
    members.heartbeat("a", "1", "A")
    members.heartbeat("b", "1", "B")
    clock.t += 10.0  # the registrar is not scheduled for 10 s: its next sweep comes late
    assert members.sweep() == []  # counting wall time, both were 10 s silent: dropped both
    assert members.stalled_s == 8.0  # all beyond two periods
    members.heartbeat("a", "1", "A")  # a's heartbeat was queued meanwhile; b really went quiet
    assert members.heartbeat("a", "1", "A").verdict is Verdict.KNOWN
    clock.t += 1.0
    assert members.sweep() == []       # b silent 3 s of the registrar's running time: not more than 3
    clock.t += 1.0
    assert members.sweep() == ["b"]    # 4 s: dropped
    assert [key for key, _, _ in members.members()] == ["a"]


def test_a_member_dropped_for_missed_heartbeats_is_taken_back_at_its_next_one_and_told_so():
    clock = Clock()
    members = table(clock)
    members.heartbeat("m1", "1", "M")
    members.sweep()
    assert sweeping(clock, members, 1004.0) == {4.0: ["m1"]}
    clock.t += 2.0
    back = members.heartbeat("m1", "1", "M")  # the same incarnation: it was alive, only late
    assert back.verdict is Verdict.JOINED and back.changed
    assert back.reason == "back 2.0s after it was dropped for missed heartbeats"
    assert members.heartbeat("m1", "1", "M") == Heard(Verdict.KNOWN)
    assert members.heartbeat("m2", "1", "N").reason == ""  # a first join says nothing of the kind


def test_a_nodes_own_stall_is_not_its_leaders_silence_and_status_says_it_stood_still():
    clock = Clock()
    node = Standing(False, failure_timeout_s=5.0, retry_s=3.0, clock=clock, tick_every_s=1.0)
    node.step()
    node.heard("n0")
    assert node.note() == ""  # joining the first time is no news
    clock.t += 1.0
    assert node.step() == 0.0
    clock.t += 12.0  # the registry is not scheduled (or blocked in a send) for 12 s
    assert node.step() == 10.0
    assert node.silent_for() is None and node.in_cluster  # 3 s of its own running time: not lost
    assert node.note() == ("this node stood still for 10.0s (not scheduled, stopped or blocked), a silence not "
                           "counted against the cluster (0s ago)")
    for _ in range(3):  # no membership any more while it runs: the leader really is gone
        clock.t += 1.0
        node.step()
    assert node.silent_for() == 6.0


def test_notes_say_what_last_happened_a_loss_a_return_and_a_drop():
    clock = Clock()
    node = standing(clock)
    node.heard("n0")
    clock.t += 6.0
    node.lost("no answer from the registrar for 6.0s")
    assert node.note() == "left the cluster: leader n0 unreachable (no answer from the registrar for 6.0s) (0s ago)"
    clock.t += 4.0
    assert node.heard("n0") == 4.0
    clock.t += 20.0
    assert node.note() == ("back in the cluster led by n0 after 4.0s outside it (no answer from the registrar "
                           "for 6.0s) (20s ago); left the cluster: leader n0 unreachable (no answer from the "
                           "registrar for 6.0s) (24s ago)")  # newest first
    node.dropped("back 7.1s after it was dropped for missed heartbeats")
    node.dropped("back 2.0s after it was dropped for missed heartbeats")  # replaces the one before: a repeat
    for _ in range(5):  # stall after stall under a long load: one note, the latest
        node.step()
        clock.t += 10.0
        node.step()
    notes = node.note().split("; ")
    assert node.in_cluster and len(notes) == 3
    assert notes[0].startswith("this node stood still for 8.0s")
    assert notes[1].startswith("the leader's registrar dropped this node and took it back: back 2.0s after")
    assert notes[2].startswith("back in the cluster led by n0")  # the oldest kept; the loss before it forgotten
    leader = standing(clock, leader=True)
    leader.lost("no answer from the registrar for 6.0s")
    assert leader.in_cluster and leader.describe() == "leader"
    assert leader.note().startswith("its own registrar did not answer (no answer from the registrar for 6.0s), "
                                    "located again: still the leader")


def test_a_refused_member_is_outside_from_its_first_refusal_until_it_is_heard_again():
    clock = Clock()
    member = standing(clock)
    member.heard("n0")
    clock.t += 10.0
    member.refuse("node id n1@h:1 is already held")
    clock.t += 5.0
    member.refuse("another reason")          # still outside since the first one
    clock.t += 5.0
    assert member.heard("n0") == 10.0 and member.in_cluster
    leader = standing(clock, leader=True)
    leader.heard("n0")
    leader.refuse("a stray refusal")
    assert leader.in_cluster and leader.heard("n0") is None   # the leader is never outside


def test_a_member_is_dropped_only_once_silent_longer_than_the_timeout_and_a_lone_claim_is_forgotten():
    clock = Clock()
    members = MemberTable(failure_timeout_s=5.0, confirm_s=1.0, clock=clock)
    members.heartbeat("a", "inc-a", "info-a")
    clock.t += 5.0
    assert members.sweep() == [] and "a" in members          # exactly the timeout: still a member
    clock.t += 0.01
    assert members.sweep() == ["a"] and "a" not in members


def test_a_claim_nobody_repeats_is_forgotten_after_twice_the_timeout_and_the_confirm_time():
    clock = Clock()
    members = MemberTable(failure_timeout_s=5.0, confirm_s=1.0, clock=clock)
    members.heartbeat("n1", "old", "x")
    claimed = clock.t
    assert members.heartbeat("n1", "new", "y").verdict is Verdict.HELD
    clock.t += 0.5
    members.heartbeat("n1", "old", "x")                           # the holder is alive: the claim is refused
    assert members.heartbeat("n1", "new", "y").verdict is Verdict.REFUSED
    while clock.t < claimed + 10.5:                               # the holder keeps talking; the claimant does not
        clock.t += 0.5
        members.heartbeat("n1", "old", "x")
    clock.t = claimed + 11.0
    members.sweep()
    assert members.heartbeat("n1", "new", "y").verdict is Verdict.REFUSED   # 11 s: not yet forgotten
    clock.t = claimed + 11.01
    members.heartbeat("n1", "old", "x")
    members.sweep()
    assert members.heartbeat("n1", "new", "y").verdict is Verdict.HELD       # forgotten: a new claim


def test_what_a_claimant_is_told_and_exactly_when_a_silent_holder_is_replaced():
    clock = Clock()
    members = MemberTable(failure_timeout_s=5.0, confirm_s=2.0, clock=clock)
    members.heartbeat("n1", "old", "x")
    clock.t += 1.0
    held = members.heartbeat("n1", "new", "y")
    assert held.reason == ("node id n1 is already held by a live node (incarnation old, heard from 1.0s ago); "
                           "waiting to see whether it is still alive")
    members.heartbeat("n1", "old", "x")             # at the same moment as the claim: not proof the holder lives on
    clock.t += 2.0
    replaced = members.heartbeat("n1", "new", "y")   # holder silent for exactly confirm_s, claim as old
    assert replaced.verdict is Verdict.REPLACED and replaced.reason == "node id n1 restarted (incarnation old -> new)"
    refused_table = MemberTable(failure_timeout_s=5.0, confirm_s=2.0, clock=clock)
    refused_table.heartbeat("n2", "a", "x")
    refused_table.heartbeat("n2", "b", "y")
    clock.t += 0.5
    refused_table.heartbeat("n2", "a", "x")
    refused = refused_table.heartbeat("n2", "b", "y")
    assert refused.reason.endswith("; give this node another name (--name) or advertised address")
    assert refused.reason.startswith("node id n2 is already held by a live node (incarnation a, heard from 0.0s")


def test_a_loss_is_counted_from_when_it_first_happened():
    clock = Clock()
    member = standing(clock)
    member.heard("n0")
    clock.t += 6.0
    member.lost("silent")
    clock.t += 4.0
    member.lost("still silent")               # already outside: since the first loss
    clock.t += 1.0
    assert member.heard("n0") == 5.0


def test_a_refusal_is_news_in_its_own_words_and_a_new_reason_replaces_the_old():
    clock = Clock()
    member = standing(clock)
    member.heard("n0")
    member.refuse("node id n1@h:1 is already held")
    clock.t += 3.0
    member.dropped("back 1.0s after it was dropped")
    assert member.note() == ("the leader's registrar dropped this node and took it back: back 1.0s after it was "
                             "dropped (0s ago); refused by the cluster: node id n1@h:1 is already held (3s ago)")
    member.refuse("another reason")
    assert member.note().startswith("refused by the cluster: another reason (0s ago); the leader's registrar")


def test_the_table_remembers_the_last_256_drops_oldest_forgotten_first():
    clock = Clock()
    members = table(clock)
    for i in range(257):
        members.heartbeat(f"m{i}", "1", "M")
    clock.t += 4.0
    assert len(members.sweep()) == 257                 # 257 drops: the first one is forgotten
    assert members.heartbeat("m0", "1", "M").reason == ""
    assert members.heartbeat("m1", "1", "M").reason == "back 0.0s after it was dropped for missed heartbeats"
    members256 = table(clock)
    for i in range(256):
        members256.heartbeat(f"m{i}", "1", "M")
    clock.t += 4.0
    members256.sweep()                                 # exactly 256: all remembered
    assert members256.heartbeat("m0", "1", "M").reason.startswith("back 0.0s")


def test_the_tables_defaults_are_the_documented_ones():
    members = MemberTable()
    assert (members.failure_timeout_s, members.confirm_s, members.stalled_s) == (5.0, 2.0, 0.0)
    assert members.stalls.every_s == 1.0


def test_a_node_that_never_heard_its_leader_says_it_does_not_know_which():
    clock = Clock()
    node = standing(clock)
    node.heard("")                                  # a membership that did not name its leader
    node.lost("no answer")
    assert node.note() == "left the cluster: leader ? unreachable (no answer) (0s ago)"


def test_a_holder_back_after_a_drop_starts_any_claim_on_its_id_afresh():
    clock = Clock()
    members = table(clock)                         # failure 3 s, confirm 1 s
    members.heartbeat("n@h:1", "a", "A")
    assert members.heartbeat("n@h:1", "b", "B").verdict is Verdict.HELD    # b claims the id
    clock.t += 4.0
    assert members.sweep() == ["n@h:1"]            # a went silent: dropped
    assert members.heartbeat("n@h:1", "a", "A").verdict is Verdict.JOINED  # a is back first
    clock.t += 0.1
    assert members.heartbeat("n@h:1", "b", "B").verdict is Verdict.HELD    # b's old claim is gone: it waits again


def test_a_loss_without_a_reason_and_a_return_to_an_unnamed_leader_say_only_what_is_known():
    clock = Clock()
    node = standing(clock)
    assert node.heard("") == 0.0                   # the first membership: outside since start until now
    assert node.heard("") is None                  # already in: no news
    node.lost("")
    clock.t += 2.0
    assert node.describe() == "not in cluster: leader ? unreachable for 2s"
    assert node.heard("") == 2.0
    assert node.note().startswith("back in the cluster led by ? after 2.0s outside it (0s ago); ")


def test_the_leaders_first_membership_is_news_of_no_time_outside_and_later_ones_none():
    clock = Clock()
    leader = standing(clock, leader=True)
    assert leader.heard("n0") == 0.0 and leader.heard("n0") is None


def test_a_standings_defaults_are_the_documented_ones():
    node = Standing(leader=False)
    assert (node.failure_timeout_s, node.retry_s) == (5.0, 3.0)
    assert not node.quiet and node.lost_why == "" and node.outside_since is not None
    assert Standing(leader=True).outside_since is None
