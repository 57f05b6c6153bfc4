import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.errors import BudgetExceeded
from actors.core.ratelimit import (LAG_MEMORY_S, RECALL_S, RateLimits, Reservation, WindowedLimiter,
                                  estimate_tokens)

from fakes import FakeClock, FixedRandom

T0 = 1_800_000_000.0  # a multiple of 60: the start of a window


def limiter(node="n1", clock=None, **limits):
    clock = clock or FakeClock(T0)
    return WindowedLimiter(node, RateLimits(**limits), wall_clock=clock, clock=clock), clock


def test_rpm_admits_up_to_the_budget_then_says_when_to_return():
    lim, clock = limiter(rpm=3)
    clock.advance(15)
    for _ in range(3):
        assert isinstance(lim.try_acquire(tokens=10), Reservation)
    denied = lim.try_acquire(tokens=10)
    assert isinstance(denied, BudgetExceeded) and denied.limit == "rpm" and denied.retryable
    assert denied.retry_after_s == pytest.approx(45)  # the next window
    clock.advance(45)
    assert isinstance(lim.try_acquire(tokens=10), Reservation)


def test_tpm_and_a_rejection_records_nothing():
    lim, _ = limiter(tpm=100)
    assert isinstance(lim.try_acquire(tokens=60), Reservation)
    denied = lim.try_acquire(tokens=50)
    assert isinstance(denied, BudgetExceeded) and denied.limit == "tpm"
    assert lim.usage().tokens == 60 and lim.usage().requests == 1
    assert isinstance(lim.try_acquire(tokens=40), Reservation)


def test_a_request_bigger_than_the_whole_budget_is_not_retryable():
    lim, _ = limiter(tpm=100)
    denied = lim.try_acquire(tokens=101)
    assert isinstance(denied, BudgetExceeded) and not denied.retryable


def test_reconcile_refunds_and_charges():
    lim, _ = limiter(tpm=1000)
    r = lim.try_acquire(tokens=500)
    lim.reconcile(r, 120)
    assert lim.usage().tokens == 120
    r2 = lim.try_acquire(tokens=100)
    lim.reconcile(r2, 300)
    assert lim.usage().tokens == 420
    lim.release(lim.try_acquire(tokens=50))
    assert (lim.usage().requests, lim.usage().tokens) == (2, 420)


def test_reconcile_after_the_window_rolled_charges_the_current_window():
    lim, clock = limiter(tpm=1000)
    r = lim.try_acquire(tokens=100)
    clock.advance(130)  # two windows later: r's window is gone
    lim.reconcile(r, 400)
    assert lim.usage().tokens == 300
    lim.reconcile(r, 10)  # a refund to a window that is gone is dropped
    assert lim.usage().tokens == 300


def test_burst_paces_the_window_like_a_token_bucket():
    lim, clock = limiter(rpm=60, burst=0.1)
    granted = sum(isinstance(lim.try_acquire(tokens=1), Reservation) for _ in range(20))
    assert granted == 6  # 10% up front
    denied = lim.try_acquire(tokens=1)
    assert denied.retry_after_s == pytest.approx(1.0)  # one more fits after 1/60 of the window
    clock.advance(30)
    granted = sum(isinstance(lim.try_acquire(tokens=1), Reservation) for _ in range(60))
    assert granted == 30  # 60 * (0.1 + 0.5) - 6
    clock.advance(30)
    assert isinstance(lim.try_acquire(tokens=1), Reservation)


def test_windows_roll_and_old_windows_are_dropped():
    lim, clock = limiter(rpm=2)
    lim.try_acquire(1)
    lim.try_acquire(1)
    clock.advance(60)
    assert lim.usage().requests == 0
    clock.advance(120)
    lim.try_acquire(1)
    assert len(lim.state()) <= 2


def test_cluster_view_merges_other_nodes_spend():
    a, clock = limiter("a", rpm=10, tpm=10_000)
    # The share rule admits a slot's first request in a sync period by a random draw: fixed here.
    b = WindowedLimiter("b", RateLimits(rpm=10, tpm=10_000), wall_clock=clock, clock=clock, rand=lambda: 0.0)
    for _ in range(6):
        a.try_acquire(100)
    b.merge(a.take_delta())
    assert b.usage().requests == 6
    granted = 0
    for _ in range(10):  # one request per sync period: the share rule never binds
        granted += isinstance(b.try_acquire(100), Reservation)
        clock.advance(0.5)
    assert granted == 4
    a.merge(b.state())
    assert a.usage().requests == 10 and a.usage().tokens == 1000
    assert isinstance(a.try_acquire(1), BudgetExceeded)


def test_refunds_propagate_and_deltas_are_idempotent():
    a, clock = limiter("a", tpm=1000)
    b, _ = limiter("b", clock=clock, tpm=1000)
    r = a.try_acquire(500)
    d1 = a.take_delta()
    a.reconcile(r, 100)
    d2 = a.take_delta()
    for delta in (d2, d1, d2, d1):  # reordered and duplicated
        b.merge(delta)
    assert b.usage().tokens == 100


def test_a_node_that_left_keeps_its_share_of_the_window():
    a, clock = limiter("a", rpm=10)
    b, _ = limiter("b", clock=clock, rpm=10)
    for _ in range(7):
        a.try_acquire(1)
    b.merge(a.state())
    del a  # node a is gone
    granted = 0
    for _ in range(10):
        granted += isinstance(b.try_acquire(1), Reservation)
        clock.advance(0.5)
    assert granted == 3


def test_deltas_for_expired_windows_are_ignored():
    a, clock = limiter("a", rpm=10)
    a.try_acquire(1)
    stale = a.take_delta()
    clock.advance(180)
    b, _ = limiter("b", clock=clock, rpm=10)
    b.merge(stale)
    assert b.state() == {}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 50), st.integers(0, 80)), max_size=60))
def test_replicas_converge_whatever_the_interleaving(ops):
    clock = FakeClock(T0 + 5)
    nodes = {n: WindowedLimiter(n, RateLimits(rpm=1000, tpm=10**6), wall_clock=clock) for n in "abc"}
    for node, estimate, actual in ops:
        r = nodes[node].try_acquire(estimate)
        nodes[node].reconcile(r, actual)
    deltas = [lim.take_delta() for lim in nodes.values()]
    for lim in nodes.values():
        for d in deltas:
            lim.merge(d)
    usages = {(u.requests, u.tokens) for u in (lim.usage() for lim in nodes.values())}
    assert usages == {(len(ops), sum(actual for _, _, actual in ops))}


def test_estimate_tokens():
    msgs = [{"role": "user", "content": "x" * 400}]
    assert estimate_tokens(msgs, 100) == 100 + (400 + 16) // 4
    assert estimate_tokens("", None, default_output_tokens=0) == 1
    assert estimate_tokens([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], 10) > 10


@pytest.mark.parametrize("kwargs", [dict(rpm=0), dict(tpm=-1), dict(burst=0), dict(burst=1.5), dict(window_s=0)])
def test_limits_validation(kwargs):
    with pytest.raises(ValueError):
        RateLimits(**kwargs)


def test_between_syncs_each_slot_takes_at_most_its_share_of_what_is_left():
    clock = FakeClock(T0 + 30)
    draws = FixedRandom(0.9, 0.2, 0.5)
    mono = FakeClock(0)
    nodes = [WindowedLimiter(n, RateLimits(rpm=100), wall_clock=clock, sync_interval_s=0.05, rand=draws, clock=mono)
             for n in "abc"]
    for lim in nodes:  # every slot has spent once, and everyone knows it
        lim.try_acquire(1)
    deltas = [lim.take_delta() for lim in nodes]
    for lim in nodes:
        for d in deltas:
            lim.merge(d)
    mono.advance(0.5)  # older than the staleness bound
    # Now all three admit flat out on the same stale view, with no sync in between.
    granted = [sum(isinstance(lim.try_acquire(1), Reservation) for _ in range(100)) for lim in nodes]
    mono.advance(0.05)
    assert not isinstance(nodes[1].try_acquire(1), Reservation)  # within the staleness bound: still held
    assert granted == [32, 32, 32]  # (100 - 3) / 3 each: together within the budget
    denied = nodes[0].try_acquire(1)
    assert denied.retry_after_s == 0.05 and denied.limit == "rpm"
    assert denied.message == "rpm: this node's share of the rest of the window is taken until the next sync"
    sync = [lim.take_delta() for lim in nodes]
    for lim in nodes:
        for d in sync:
            lim.merge(d)
    mono.advance(0.5)
    assert {lim.usage().requests for lim in nodes} == {99}
    # One request left, three slots: each takes it with probability 1/3 (draws 0.9, 0.2, 0.5).
    assert [isinstance(lim.try_acquire(1), Reservation) for lim in nodes] == [False, True, False]


def test_a_lone_slot_is_not_held_to_a_share():
    lim, _ = limiter("solo", rpm=50)
    assert sum(isinstance(lim.try_acquire(1), Reservation) for _ in range(60)) == 50


def test_staleness_is_measured_from_the_age_of_arriving_deltas():
    wall = FakeClock(T0 + 1)
    a = WindowedLimiter("a", RateLimits(rpm=100), wall_clock=wall, clock=wall, sync_interval_s=0.05)
    b = WindowedLimiter("b", RateLimits(rpm=100), wall_clock=wall, clock=wall, sync_interval_s=0.05)
    assert a.staleness_s == pytest.approx(0.21)  # nothing measured yet: twice two sync intervals
    b.try_acquire(1)
    oldest = b.unpublished_since
    delta = b.take_delta()
    assert b.unpublished_since is None
    wall.advance(0.4)  # a slow network, or a saturated machine
    a.merge(delta, oldest)
    assert a.staleness_s == pytest.approx(0.81)  # doubled: delays grow faster than they are seen
    wall.advance(6)  # old observations age out
    assert a.staleness_s == pytest.approx(0.21)


def test_attempt_ids_round_trip_and_reject_what_is_not_one():
    from actors.core.settlement import AttemptId

    assert AttemptId.parse(str(AttemptId("req#with#hashes", 3))) == AttemptId("req#with#hashes", 3)
    assert [AttemptId.parse(text) for text in ("", "r1", "r1#", "#2", "r1#x")] == [None] * 5


def test_a_spent_window_is_waited_out_to_its_end_without_burst():
    lim, clock = limiter(tpm=100)
    clock.advance(15)
    lim.try_acquire(tokens=100)
    assert lim.try_acquire(tokens=1).retry_after_s == pytest.approx(45)


def test_with_burst_the_wait_is_until_the_bucket_has_refilled_enough():
    lim, clock = limiter(rpm=60, burst=0.1)
    clock.advance(30)   # halfway: 60 * (0.1 + 0.5) = 36 may be spent
    assert sum(isinstance(lim.try_acquire(tokens=1), Reservation) for _ in range(40)) == 36
    assert lim.try_acquire(tokens=1).retry_after_s == pytest.approx(1.0)  # the 37th fits 1/60 of the window later
    assert lim.try_acquire(tokens=1, requests=4).retry_after_s == pytest.approx(4.0)


def test_with_burst_a_cost_that_fits_no_refill_of_this_window_waits_for_the_next():
    lim, clock = limiter(tpm=100, burst=0.5)
    clock.advance(30)
    assert isinstance(lim.try_acquire(tokens=100), Reservation)
    # 160 would need 110% of the window refilled: only the next window has room.
    assert lim.try_acquire(tokens=60).retry_after_s == pytest.approx(30)


def test_between_syncs_the_token_share_binds_too():
    wall, mono = FakeClock(T0 + 30), FakeClock(0)
    a = WindowedLimiter("a", RateLimits(tpm=1000), wall_clock=wall, clock=mono, sync_interval_s=0.05)
    b = WindowedLimiter("b", RateLimits(tpm=1000), wall_clock=wall, clock=mono, sync_interval_s=0.05)
    b.try_acquire(1)
    a.merge(b.take_delta())   # two slots spend from this budget
    assert isinstance(a.try_acquire(400), Reservation)   # within its share of the 999 left
    denied = a.try_acquire(200)  # 600 from one slot before the other can have seen it: more than its half
    assert isinstance(denied, BudgetExceeded) and denied.limit == "tpm" and "share" in denied.message
    assert denied.retry_after_s == 0.05 and a.usage().tokens == 401
    mono.advance(1.0)   # what it admitted is old enough for the other slot to have seen it
    assert isinstance(a.try_acquire(200), Reservation)


def test_a_release_gives_back_what_this_slot_reserved_in_its_own_name():
    lim, _ = limiter("n1", rpm=10, tpm=1000)
    r = lim.try_acquire(tokens=40, requests=2)
    lim.release(r)
    (window,) = lim.state()
    assert lim.state()[window]["requests_refunded"] == {"n1": 2}
    assert lim.state()[window]["tokens_refunded"] == {"n1": 40}


def test_a_merge_skips_counters_it_does_not_know_and_keeps_going():
    lim, _ = limiter("n1", rpm=10)
    window = int(T0 // 60)
    lim.merge({window: {"bogus": {"n2": 9}, "requests": {"n2": 3}}})
    assert lim.usage().requests == 3


def test_a_recent_admission_is_forgotten_exactly_at_the_staleness_horizon():
    wall, mono = FakeClock(T0 + 30), FakeClock(0)
    a = WindowedLimiter("a", RateLimits(rpm=1000), wall_clock=wall, clock=mono, sync_interval_s=0.05,
                        rand=lambda: 0.0)
    b = WindowedLimiter("b", RateLimits(rpm=1000), wall_clock=wall, clock=mono, sync_interval_s=0.05)
    b.try_acquire(1)
    a.merge(b.take_delta())
    assert isinstance(a.try_acquire(1, requests=400), Reservation)
    assert not isinstance(a.try_acquire(1, requests=400), Reservation)   # its recent 400 count against its share
    staleness = a.staleness_s
    mono.advance(staleness)
    # Exactly as old as the horizon: the other slot has seen it, so it no longer holds this one to a share.
    assert isinstance(a.try_acquire(1, requests=400), Reservation)


def test_with_burst_a_window_never_allows_more_than_its_budget():
    lim, clock = limiter(rpm=10, burst=0.5)
    clock.advance(45)                      # 0.5 + 0.75 of the window would be more than all of it
    assert sum(isinstance(lim.try_acquire(1), Reservation) for _ in range(20)) == 10


def test_only_the_current_and_the_next_window_take_counts_and_two_old_windows_are_gone():
    lim, clock = limiter(rpm=10)
    window = int(T0 // 60)
    lim.merge({window + 2: {"requests": {"far-ahead": 5}}})
    lim.merge({window + 1: {"requests": {"a-bit-ahead": 5}}})
    assert set(lim.state()) == {window + 1}
    lim.try_acquire(1)
    clock.advance(120)                     # two windows on: the window it spent in is gone
    lim.try_acquire(1)
    assert window not in lim.state()


def test_a_slot_counts_as_a_participant_for_this_and_the_previous_window_only():
    lim, clock = limiter("n1", rpm=100)
    window = int(T0 // 60)
    lim.merge({window - 1: {"requests": {"yesterday": 1}}})
    assert lim.participants() == 2
    clock.advance(60)
    assert lim.participants() == 1          # two windows ago: not sharing this one
    lim.merge({window + 2: {"requests": {"tomorrow": 1}}})
    assert lim.participants() == 1


def test_refusals_name_the_limit_that_refused():
    lim, _ = limiter(rpm=1, tpm=100)
    assert lim.refusal(tokens=101).limit == "tpm" and lim.refusal(tokens=1, requests=2).limit == "rpm"
    lim.try_acquire(1)
    assert lim.refusal(tokens=1).limit == "rpm"


def test_what_a_slot_remembers_of_its_recent_admissions_stays_bounded():
    wall, mono = FakeClock(T0 + 1), FakeClock(0)
    lim = WindowedLimiter("a", RateLimits(rpm=10 ** 6), wall_clock=wall, clock=mono, sync_interval_s=0.05)
    for _ in range(2000):
        lim.try_acquire(1)
        mono.advance(0.05)                  # 100 s of steady admissions
    # The last RECALL_S + LAG_MEMORY_S seconds' worth at most (pruned now and then), not all of them.
    assert len(lim._recent) <= (RECALL_S + LAG_MEMORY_S) / 0.05 + 1


def test_the_full_state_holds_only_the_windows_that_still_count():
    lim, clock = limiter(rpm=5)
    lim.try_acquire(1)
    clock.advance(60)
    lim.try_acquire(1)
    assert len(lim.state()) == 2
    clock.advance(180)                    # both windows are over: state() alone drops them
    assert lim.state() == {}


def test_with_burst_a_wait_under_a_second_is_said_as_it_is():
    lim, clock = limiter(rpm=600, burst=0.1)
    clock.advance(30)   # 600 * (0.1 + 0.5) = 360 may be spent
    assert sum(isinstance(lim.try_acquire(tokens=1), Reservation) for _ in range(361)) == 360
    assert lim.try_acquire(tokens=1).retry_after_s == pytest.approx(0.1)   # 1/600 of the window later


def test_a_merge_skips_a_window_that_is_gone_and_takes_the_rest():
    a, clock = limiter("a", rpm=10)
    a.try_acquire(1)
    stale = a.take_delta()
    clock.advance(180)
    a.try_acquire(1)
    a.try_acquire(1)
    b, _ = limiter("b", clock=clock, rpm=10)
    b.merge({**stale, **a.take_delta()})           # the gone window first
    assert b.usage().requests == 2


def test_a_request_larger_than_the_whole_budget_is_refused_for_good_saying_so():
    lim, _ = limiter(tpm=100)
    refused = lim.try_acquire(tokens=101)
    assert refused.message == "one request needs 101 against a tpm budget of 100"
    assert refused.limit == "tpm" and refused.retryable is False


def test_a_delta_later_than_the_assumed_staleness_brings_older_admissions_back_into_the_share():
    """A stall longer than the last few seconds showed: once a delta shows it, what this slot admitted
    within the new horizon counts as recent again, so it stops taking more on its stale view."""
    wall, mono = FakeClock(T0 + 30), FakeClock(0)
    a, b, c = (WindowedLimiter(n, RateLimits(rpm=60), wall_clock=wall, clock=mono, sync_interval_s=0.05,
                               rand=lambda: 0.99) for n in "abc")
    for lim in (b, c):             # b and c share the budget (each spent once, a knows it)
        lim.try_acquire(1)
        a.merge(lim.take_delta())
    granted = sum(isinstance(a.try_acquire(1), Reservation) for _ in range(30))
    assert granted == 19           # its third of the 58 left
    assert a.staleness_s == pytest.approx(0.21)
    b.record(1)                    # b admits one at the same moment...
    sent = b.unpublished_since
    wall.advance(0.3)
    mono.advance(0.3)              # ...and its delta takes 0.3 s: a's 19 are past the 0.21 s assumed,
    assert isinstance(a.try_acquire(1), Reservation)   # so a takes a share of the rest it thinks is left
    a.merge(b.take_delta(), sent)
    assert a.view_health() == {"staleness_s": pytest.approx(0.61), "late_deltas": 1, "worst_late_s": 0.3}
    # Its 20 are recent again under the wider horizon: its share of the rest is already taken.
    assert not isinstance(a.try_acquire(1), Reservation)
    wall.advance(0.62)
    mono.advance(0.62)
    assert isinstance(a.try_acquire(1), Reservation)   # past the new horizon: the other slots have seen them


def test_deltas_within_the_assumed_staleness_are_not_late():
    wall = FakeClock(T0 + 1)
    a, b = (WindowedLimiter(n, RateLimits(rpm=100), wall_clock=wall, clock=wall, sync_interval_s=0.05) for n in "ab")
    b.try_acquire(1)
    oldest = b.unpublished_since
    wall.advance(0.2)
    a.merge(b.take_delta(), oldest)
    assert a.view_health()["late_deltas"] == 0 and a.view_health()["worst_late_s"] == 0.0
