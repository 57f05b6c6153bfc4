import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.errors import BudgetExceeded
from actors.ratelimit import RateLimits, Reservation, WindowedLimiter, estimate_tokens

from fakes import FakeClock

T0 = 1_800_000_000.0  # a multiple of 60: the start of a window


def limiter(node="n1", clock=None, **limits):
    clock = clock or FakeClock(T0)
    return WindowedLimiter(node, RateLimits(**limits), wall_clock=clock), clock


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
    b, _ = limiter("b", clock=clock, rpm=10, tpm=10_000)
    for _ in range(6):
        a.try_acquire(100)
    b.merge(a.take_delta())
    assert b.usage().requests == 6
    granted = sum(isinstance(b.try_acquire(100), Reservation) for _ in range(10))
    assert granted == 4
    a.merge(b.take_delta())
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
    assert sum(isinstance(b.try_acquire(1), Reservation) for _ in range(10)) == 3


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
